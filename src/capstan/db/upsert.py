"""INSERT ... ON CONFLICT DO NOTHING, the one idempotency primitive, on both dialects."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def _insert(session: AsyncSession, table: Table, values: dict[str, Any]) -> Any:
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).values(**values).on_conflict_do_nothing()


async def insert_ignore(session: AsyncSession, table: Table, values: dict[str, Any]) -> bool:
    """Insert unless a unique key already holds the row; True when this call inserted it."""
    result = await session.execute(_insert(session, table, values))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def insert_ignore_returning(
    session: AsyncSession, table: Table, values: dict[str, Any], column: ColumnElement[Any]
) -> Any | None:
    """`insert_ignore` that also returns `column` of the new row (None when it existed), in
    the same round trip (RETURNING: PostgreSQL, and SQLite >= 3.35)."""
    result = await session.execute(_insert(session, table, values).returning(column))
    return result.scalar_one_or_none()
