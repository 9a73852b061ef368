"""SQLite FTS5, the embedded full-text engine; it lives in the main SQLite database and is kept
by triggers in the write transaction (migration 0003), so a write is searchable at commit."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from capstan.search.port import SearchUnavailable
from capstan.search.sql import SqliteSearch


class SqliteFts(SqliteSearch):
    async def ping(self) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(
                    text("CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts5_probe USING fts5(x)")
                )
        except OperationalError as exc:
            raise SearchUnavailable(f"sqlite fts5: {exc.orig}") from exc
