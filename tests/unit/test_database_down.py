"""Which database errors mean "unreachable, retry later" (503) and which are the request's fault."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import IntegrityError

from capstan.db.errors import is_database_down


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        # Seen after a PostgreSQL restart on the fast path's pool (CI, issue 11).
        asyncpg.exceptions._base.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
    ],
)
def test_outages_count_as_down(exc: BaseException) -> None:
    assert is_database_down(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.UndefinedColumnError("no such column"),
        IntegrityError("INSERT", {}, Exception("duplicate")),
        ValueError("not a database error"),
    ],
)
def test_statement_errors_do_not(exc: BaseException) -> None:
    assert not is_database_down(exc)
