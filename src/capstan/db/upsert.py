"""INSERT ... ON CONFLICT DO NOTHING, the one idempotency primitive, on both dialects
(capstan.db.dialect builds the statement; these take the dialect from the session)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.dialect import dialect_of


async def insert_ignore(session: AsyncSession, table: Table, values: dict[str, Any]) -> bool:
    """Insert unless a unique key already holds the row; True when this call inserted it."""
    return await dialect_of(session).insert_ignore(session, table, values)


async def insert_ignore_returning(
    session: AsyncSession, table: Table, values: dict[str, Any], column: ColumnElement[Any]
) -> Any | None:
    """`insert_ignore` that also returns `column` of the new row (None when it existed), in
    the same round trip (RETURNING: PostgreSQL, and SQLite >= 3.35)."""
    return await dialect_of(session).insert_ignore_returning(session, table, values, column)
