"""PostgreSQL full-text search: the fallback engine when Elasticsearch is not configured."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from capstan.search.port import SearchUnavailable


class PostgresFts:
    name = "postgres-fts"

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ping(self) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT to_tsvector('simple', 'capstan')"))
        except (OperationalError, DBAPIError, OSError) as exc:
            raise SearchUnavailable(f"postgres fts: {exc}") from exc

    async def close(self) -> None:
        return None
