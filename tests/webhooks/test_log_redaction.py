"""Secrets stay out of logs: webhook URLs (credentials, query tokens) and SQL parameters.

Each test runs the real logging configuration (`configure_logging`) at DEBUG and reads
what its handler writes, in both modes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from capstan.db.schema import Webhook
from capstan.observability.logging import QUIET, configure_logging
from tests.conftest import Api
from tests.webhooks.conftest import Hooks, Receiver, make_event


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """The production logging setup (`configure_logging`) at DEBUG, its one handler writing
    to the returned buffer instead of stderr; the previous setup is restored after the test."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in QUIET}
    configure_logging("DEBUG", json=True)
    [handler] = root.handlers
    buffer = io.StringIO()
    handler.setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


async def test_a_webhook_delivery_logs_no_credentials_or_query_token(
    hooks: Hooks, receiver: Receiver, logged: io.StringIO
) -> None:
    tenant = await hooks.api.tenant()
    secret_url = receiver.url.replace("http://", "http://alice:pa55word@") + "?token=qt0ken"
    await hooks.create(tenant.key, secret_url, ["document.*"])
    await hooks.feed(make_event(tenant.id))
    await hooks.dispatch_until_settled(hooks.dispatcher())
    # A failing one too: its error and warning lines go through the same handler.
    await hooks.create(tenant.key, "http://bob:hunter22@127.0.0.1:9/x?sig=s1gnature")
    await hooks.feed(make_event(tenant.id))
    await hooks.dispatcher(webhook_max_attempts=1).dispatch_due()
    logging.getLogger("httpx").warning("HTTP Request: POST %s", secret_url)  # if httpx did

    assert receiver.requests and receiver.requests[0].path == "/hook?token=qt0ken"
    output = logged.getvalue()
    assert "HTTP Request" in output  # the capture works: the line is there, redacted
    for secret in ("pa55word", "qt0ken", "hunter22", "s1gnature"):
        assert secret not in output


async def test_a_failed_insert_logs_no_sql_parameters(api: Api, logged: io.StringIO) -> None:
    signing_secret = "whsec_never-in-a-log-" + datetime.now(UTC).strftime("%f")
    with pytest.raises(IntegrityError) as failed:
        async with api.container.db.begin() as session:
            session.add(
                Webhook(
                    id="w-1",
                    tenant_id="no-such-tenant",  # a foreign key violation
                    url="https://example.com/h",
                    patterns=["#"],
                    secret=signing_secret,
                    status="active",
                    disabled_reason=None,
                    consecutive_failures=0,
                    created_at=datetime.now(UTC),
                )
            )
    # What the API's 500 handler does with an unexpected error.
    logging.getLogger("capstan.api.problems").exception("unhandled error", exc_info=failed.value)

    output = logged.getvalue()
    assert "IntegrityError" in output and "INSERT INTO webhooks" in output
    assert signing_secret not in str(failed.value)
    assert signing_secret not in output
