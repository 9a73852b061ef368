"""Read routing: list and search queries on a streaming replica, never older than a write
that was acknowledged before the read began.

Before a routed read the primary's WAL position is taken (`pg_current_wal_lsn()`); the read
runs on the replica only once the replica has replayed past it (`pg_last_wal_replay_lsn()`).
Every write acknowledged before then (the caller's own included, through any API instance)
is therefore visible, with no shared state between instances. A replica that does not catch
up within `max_wait_seconds` is passed over for the primary; one that is unreachable is
skipped for `retry_seconds` (a breaker), so its loss costs one failed connect, not one per read.
Without a replica (or on SQLite) every read goes to the primary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from capstan.db.errors import is_database_down

T = TypeVar("T")

log = logging.getLogger(__name__)

_PRIMARY_LSN = text("SELECT pg_current_wal_lsn()::text")
# NULL when the server is not a standby (promoted, or a primary by mistake): never route there,
# its data may have diverged from the primary's.
_CAUGHT_UP = text(
    "SELECT CASE WHEN pg_is_in_recovery()"
    " THEN pg_last_wal_replay_lsn() >= CAST(CAST(:lsn AS text) AS pg_lsn) END"
)


class ReadRouter:
    """Runs read-only work on the replica when it is current enough, else on the primary."""

    def __init__(
        self,
        primary: AsyncEngine,
        replica: AsyncEngine | None = None,
        *,
        max_wait_seconds: float = 0.05,
        retry_seconds: float = 5.0,
        poll_seconds: float = 0.002,
        on_route: Callable[[str], None] = lambda _target: None,
    ) -> None:
        self._primary = primary
        self._replica = replica
        self._max_wait = max_wait_seconds
        self._retry = retry_seconds
        self._poll = poll_seconds
        self._on_route = on_route
        self._replica_down_until = 0.0

    @property
    def replica_configured(self) -> bool:
        return self._replica is not None

    @property
    def replica_available(self) -> bool:
        return self._replica is not None and time.monotonic() >= self._replica_down_until

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`work` on a connection that sees every write acknowledged before this call."""
        if self._replica is None or not self.replica_available:
            return await self._on_primary(work)
        async with self._primary.connect() as conn:
            target = (await conn.execute(_PRIMARY_LSN)).scalar_one()
        try:
            async with self._replica.connect() as conn:
                if await self._caught_up(conn, str(target)):
                    result = await work(conn)
                    self._on_route("replica")
                    return result
        except (DBAPIError, OSError) as exc:
            down = is_database_down(exc)
            if down:
                self._replica_down_until = time.monotonic() + self._retry
            # Anything else (a query cancelled by a recovery conflict, say) is retried on the
            # primary too: a statement that is wrong fails there as well and is reported.
            log.warning(
                "read replica failed, reading from the primary",
                extra={"error": str(exc), "replica_down": down},
            )
        return await self._on_primary(work)

    async def run_session(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`run` for ORM code: a session bound to the chosen connection."""

        async def with_session(conn: AsyncConnection) -> T:
            async with AsyncSession(bind=conn, expire_on_commit=False) as session:
                return await work(session)

        return await self.run(with_session)

    async def ping(self) -> None:
        """Reach the replica (even while skipped); success makes it eligible again."""
        if self._replica is None:
            return
        async with self._replica.connect() as conn:
            await conn.execute(text("SELECT 1"))
        self._replica_down_until = 0.0

    async def close(self) -> None:
        if self._replica is not None:
            await self._replica.dispose()

    async def _on_primary(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with self._primary.connect() as conn:
            result = await work(conn)
        self._on_route("primary")
        return result

    async def _caught_up(self, conn: AsyncConnection, lsn: str) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while True:
            caught_up = (await conn.execute(_CAUGHT_UP, {"lsn": lsn})).scalar()
            if caught_up is None:
                return False
            if caught_up:
                return True
            if loop.time() >= deadline:
                self._on_route("lagging")
                return False
            await asyncio.sleep(self._poll)
