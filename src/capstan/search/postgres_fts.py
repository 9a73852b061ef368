"""PostgreSQL full-text search: the structured engine in production, and the full-text fallback
when Elasticsearch is down (a generated `tsvector` column with a GIN index, migration 0003)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from capstan.search.port import SearchUnavailable
from capstan.search.sql import PostgresSearch


class PostgresFts(PostgresSearch):
    async def ping(self) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT to_tsvector('simple', 'capstan')"))
        except (OperationalError, DBAPIError, OSError) as exc:
            raise SearchUnavailable(f"postgres fts: {exc}") from exc
