"""The fast path's pool hands a connection back without asyncpg's reset query (one more round
trip per hot statement, issue 11), and a connection given back inside a transaction is still
rolled back before anyone else gets it."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from capstan.db.fastpath import FastPath

pytestmark = pytest.mark.postgres


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def test_a_released_connection_is_not_sent_a_reset_query(postgres_url: str) -> None:
    fast = FastPath(postgres_url, max_size=1)
    watcher = await asyncpg.connect(_dsn(postgres_url))
    try:
        pid = await fast.fetchrow("SELECT pg_backend_pid() AS pid, 'fastpath-marker'")
        # pg_stat_activity.query is the backend's last statement, set when it starts.
        last = await watcher.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid[0])
        assert "fastpath-marker" in last, f"the pool sent {last!r} after the statement"
    finally:
        await watcher.close()
        await fast.close()


async def test_a_connection_released_inside_a_transaction_is_rolled_back(
    postgres_url: str,
) -> None:
    fast = FastPath(postgres_url, max_size=1)
    try:
        with pytest.raises(RuntimeError):
            async with fast.connection() as conn:
                tx = conn.transaction()
                await tx.start()
                await conn.execute("CREATE TEMP TABLE fastpath_left_open (x int)")
                raise RuntimeError("the holder fails before it commits")
        # Same single connection: the table was created in a transaction that never committed.
        assert await fast.fetchrow("SELECT to_regclass('pg_temp.fastpath_left_open')") == (None,)
        assert await fast.fetchrow("SELECT 1 AS one") == (1,)
    finally:
        await fast.close()


async def test_a_pool_created_for_a_cancelled_caller_is_closed(postgres_url: str) -> None:
    fast = FastPath(postgres_url, max_size=1)
    caller = asyncio.create_task(fast.fetchrow("SELECT 1"))
    await asyncio.sleep(0)  # the creation has started
    creating = fast._creating
    assert creating is not None
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await fast.close()
    # The creation finished under `shield` after its only caller left: close() closed it.
    assert creating.done() and creating.result()._closed
