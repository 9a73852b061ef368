"""SQLite FTS5, the embedded full-text engine; it lives in the main SQLite database."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from capstan.search.port import SearchUnavailable


class SqliteFts:
    name = "sqlite-fts5"

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ping(self) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(
                    text("CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts5_probe USING fts5(x)")
                )
        except OperationalError as exc:
            raise SearchUnavailable(f"sqlite fts5: {exc.orig}") from exc

    async def close(self) -> None:
        return None
