"""Single-statement hot paths on PostgreSQL, through asyncpg without the ORM.

The ORM costs ~1.7 ms of client CPU for a claim transaction; the same work as one prepared
statement in autocommit costs ~0.2 ms (issue 11's profile). Each hot operation (claim, finish,
submit, relay batch, audit batch) is therefore written as ONE statement (data-modifying CTEs
keep the row change and its outbox event atomic without BEGIN/COMMIT round trips), and runs
here. SQLite (embedded mode) keeps the portable SQLAlchemy path: it has no data-modifying CTEs,
and one process needs no such economy.

The pool is separate from SQLAlchemy's so that a connection broken by a server restart is
discarded by asyncpg itself; statements are prepared once per connection (asyncpg's cache).
Released connections are not reset: asyncpg's default reset is one more round trip per
operation (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`), and the hot
statements leave no session state behind (no SET, LISTEN, cursor or session lock; the relay
listens on a connection of its own). An open transaction is still rolled back by asyncpg.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from sqlalchemy.engine import make_url


class FastPath:
    """A small asyncpg pool for the hot statements; connects on first use."""

    def __init__(self, database_url: str, *, max_size: int = 10) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._max_size = max_size
        self._pool: Any = None
        self._creating: asyncio.Future[Any] | None = None

    async def _get_pool(self) -> Any:
        if self._pool is None:
            if self._creating is None:
                # One creation for every concurrent first caller: two pools would leak one.
                self._creating = asyncio.ensure_future(self._create())
            try:
                self._pool = await asyncio.shield(self._creating)
            finally:
                if self._creating is not None and self._creating.done():
                    self._creating = None
        return self._pool

    async def _create(self) -> Any:
        import asyncpg

        return await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=self._max_size,
            init=_init_connection,
            reset=_keep_session,
            timeout=5,
        )

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        """One row (an asyncpg Record) or None; the statement commits on its own."""
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    async def execute(self, sql: str, *args: Any) -> str:
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            status: str = await conn.execute(sql, *args)
            return status

    def connection(self) -> Any:
        """`async with fast.connection() as conn:` for the few multi-statement paths (relay)."""
        return _Acquire(self)

    async def close(self) -> None:
        creating, self._creating = self._creating, None
        if self._pool is None and creating is not None:
            # Every caller awaiting the creation was cancelled (a shutdown mid-statement):
            # it went on under `shield`, and its pool would be left open.
            with contextlib.suppress(Exception):
                self._pool = await creating
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


class _Acquire:
    def __init__(self, fast: FastPath) -> None:
        self._fast = fast
        self._ctx: Any = None

    async def __aenter__(self) -> Any:
        pool = await self._fast._get_pool()
        self._ctx = pool.acquire()
        return await self._ctx.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        await self._ctx.__aexit__(*exc)


async def _init_connection(conn: Any) -> None:
    # json/jsonb as Python values, as SQLAlchemy's JSON type gives them.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=_dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


async def _keep_session(conn: Any) -> None:
    """The pool's reset on release: nothing to undo (see the module docstring)."""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
