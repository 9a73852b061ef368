"""One line for an error that reached the top of a command: what failed and what to do."""

from __future__ import annotations

from capstan.broker.port import BrokerUnavailable
from capstan.db.errors import is_database_down
from capstan.errors import CapstanError

DOCTOR = "`capstan doctor` checks every setting and server"


def describe(exc: BaseException) -> str:
    """A one-line account of `exc` for a person at a terminal."""
    if isinstance(exc, CapstanError):
        return exc.detail
    if isinstance(exc, BrokerUnavailable):
        return f"the broker is unreachable ({exc}); check CAPSTAN_BROKER_URL ({DOCTOR})"
    if is_database_down(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the database is unreachable ({first}); check CAPSTAN_DATABASE_URL ({DOCTOR})"
    name = type(exc).__module__.split(".")[0]
    if name in ("redis", "elasticsearch", "elastic_transport", "aiormq", "aio_pika"):
        return f"{name} failed: {exc} ({DOCTOR})"
    return (
        f"unexpected {type(exc).__name__}: {exc} "
        "(run again with CAPSTAN_DEBUG=1 for the traceback, and please report it)"
    )
