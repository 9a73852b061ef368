"""The log redaction rule on its own: what is removed, and what is kept."""

from __future__ import annotations

import io
import logging

from capstan.observability.redaction import RedactSecrets, redact


def test_urls_lose_credentials_and_query_strings_but_keep_host_and_path() -> None:
    text = 'POST https://u:p%40ss@hooks.example.com:8443/a/b?token=t&x=1#frag "HTTP/1.1 200 OK"'
    assert redact(text) == (
        'POST https://[redacted]@hooks.example.com:8443/a/b?[redacted] "HTTP/1.1 200 OK"'
    )
    assert redact("amqp://guest:guest@rabbit:5672/vhost") == "amqp://[redacted]@rabbit:5672/vhost"
    assert redact("no url here: 3 < 4") == "no url here: 3 < 4"


def test_driver_messages_lose_parameter_values() -> None:
    message = "invalid input for query argument $2: 'whsec_abc' (expected str, got int)"
    assert redact(message) == "invalid input for query argument $2: [redacted]"


def test_the_filter_rewrites_message_extras_and_traceback() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(logging.Formatter("%(message)s %(target)s"))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("cannot reach https://k:secret1@h/?q=secret2")
        except ValueError:
            logger.exception(
                "failed %s", "https://h/p?secret3", extra={"target": "s://a:secret4@b"}
            )
    finally:
        logger.removeHandler(handler)
    logged = out.getvalue()
    assert "ValueError" in logged and "https://h/p?[redacted]" in logged
    assert not any(f"secret{i}" in logged for i in range(1, 5))


def test_display_url_hides_passwords_of_every_url_form() -> None:
    from capstan.observability.redaction import display_url

    assert display_url("postgresql://capstan:s3cret@db:5432/capstan") == (
        "postgresql://capstan:***@db:5432/capstan"
    )
    # libpq's host list (scale-out): SQLAlchemy does not parse it; the userinfo goes.
    shown = display_url(
        "postgresql://capstan:s3cret@127.0.0.1:5432,127.0.0.1:5433/capstan"
        "?target_session_attrs=read-write"
    )
    assert "s3cret" not in shown and "127.0.0.1:5432,127.0.0.1:5433/capstan" in shown
    nodes = display_url("amqp://u:p1@r1:5672/v,amqp://u:p2@r2:5672/v")
    assert "p1" not in nodes and "p2" not in nodes and "r1:5672" in nodes and "r2:5672" in nodes
