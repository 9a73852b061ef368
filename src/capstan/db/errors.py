"""Telling "the database is unreachable right now" apart from "this statement is wrong"."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, InternalError, OperationalError

# SQLSTATE classes that mean the connection, not the statement, failed: 08 connection
# exception, 57P operator intervention (admin shutdown, crash shutdown, cannot connect now).
_OUTAGE_SQLSTATES = ("08", "57P")


def is_database_down(exc: BaseException) -> bool:
    """True for lost or refused connections (retry later), False for errors in the request."""
    if isinstance(exc, OSError | OperationalError | InterfaceError):
        return True
    if not isinstance(exc, DBAPIError):
        return _asyncpg_outage(exc)
    # asyncpg reports a server restart as a closed connection or a confused protocol state.
    if exc.connection_invalidated or isinstance(exc, InternalError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate.startswith(_OUTAGE_SQLSTATES)


def _asyncpg_outage(exc: BaseException) -> bool:
    # The hot paths (capstan.db.fastpath) talk to asyncpg directly, so its exceptions arrive
    # unwrapped: a closed connection is an InterfaceError, a server state a SQLSTATE.
    module = type(exc).__module__
    if not module.startswith("asyncpg"):
        return False
    import asyncpg

    # InternalClientError: a statement sent on a connection still consuming a failed one's
    # error after a server restart (SQLAlchemy wraps the same as InternalError, counted above).
    if isinstance(
        exc,
        asyncpg.InterfaceError | asyncpg.PostgresConnectionError | asyncpg.InternalClientError,
    ):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate.startswith(_OUTAGE_SQLSTATES)
