"""Telling "the database is unreachable right now" apart from "this statement is wrong"."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, InternalError, OperationalError


def is_database_down(exc: BaseException) -> bool:
    """True for lost or refused connections (retry later), False for errors in the request."""
    if isinstance(exc, OSError | OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        # asyncpg reports a server restart as a closed connection or a confused protocol state.
        return exc.connection_invalidated or isinstance(exc, InternalError)
    return False
