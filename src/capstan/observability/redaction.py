"""Secrets never reach a log line: URLs lose their credentials and query strings, and driver
messages lose the values of SQL parameters.

Applied as a filter on the one log handler (observability/logging.py), so it covers every
logger, third-party ones included, and the tracebacks attached to records. SQLAlchemy's own
"[parameters: ...]" suffix is switched off at the source (`hide_parameters` in db/engine.py).
"""

from __future__ import annotations

import logging
import re

# scheme://[userinfo@]host[:port][/path][?query][#fragment], up to whitespace or a quote.
_URL = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^\s/?#@\"'<>]*@)?"
    r"(?P<rest>[^\s?#\"'<>]*)(?P<query>\?[^\s#\"'<>]*)?(?P<fragment>#[^\s\"'<>]*)?"
)
# asyncpg: "invalid input for query argument $2: 'the value' (reason)".
_QUERY_ARGUMENT = re.compile(r"(query argument \$\d+: ).*")
REDACTED = "[redacted]"


def _url(match: re.Match[str]) -> str:
    userinfo = f"{REDACTED}@" if match["userinfo"] else ""
    query = f"?{REDACTED}" if match["query"] else ""
    return f"{match['scheme']}{userinfo}{match['rest']}{query}"


def redact(text: str) -> str:
    """`text` without URL credentials, query strings or SQL parameter values."""
    if "://" in text:
        text = _URL.sub(_url, text)
    if "query argument $" in text:
        text = _QUERY_ARGUMENT.sub(rf"\g<1>{REDACTED}", text)
    return text


def display_url(url: str) -> str:
    """A server URL as the CLI shows it: password hidden, the rest kept. Several nodes as full
    URLs (capstan.node_urls) are shown each; a URL SQLAlchemy does not parse (amqp://,
    http://, a libpq host list `h1:5432,h2:5432`) loses its userinfo instead."""
    from sqlalchemy.engine import make_url

    if url.count("://") > 1:
        return ",".join(display_url(part.strip()) for part in url.split(",") if "://" in part)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}" if rest else url


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class RedactSecrets(logging.Filter):
    """Rewrites a record's message, string extras and traceback through `redact`."""

    def __init__(self) -> None:
        super().__init__()
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for name, value in list(vars(record).items()):
            if name not in _STANDARD and isinstance(value, str):
                setattr(record, name, redact(value))
        if record.exc_info:
            # Formatted once here so the handler prints the redacted text, not the original.
            record.exc_text = redact(self._formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
