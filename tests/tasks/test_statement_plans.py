"""The task lifecycle's hot statements find their row by primary key whatever plan PostgreSQL
caches for them.

asyncpg prepares each statement once per connection, and after five executions PostgreSQL may
keep a generic plan for it, costed on the statistics of that moment. A worker starting on a
fresh (or nearly empty) database then cached a claim that found its task through
`ix_tasks_worker`, with `status = 'queued'` as the index condition and the id as a filter: every
claim walked every queued task (600 buffer hits per claim in `capstan bench tasks`, 402 us of
PostgreSQL time against 181 us for the finish; pg_stat_statements). The plan is forced generic
here, on a freshly migrated database, which is where it went wrong."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from capstan.tasks import statements

pytestmark = pytest.mark.postgres


@pytest.fixture
async def fresh(fresh_postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    dsn = make_url(fresh_postgres_url).set(drivername="postgresql")
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        yield conn
    finally:
        await conn.close()


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text.replace("'", "''") + "'"


def _scans(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(node type, index name) of every scan of `tasks` in a JSON plan."""
    found = []
    if plan.get("Relation Name") == "tasks" and plan["Node Type"].endswith("Scan"):
        found.append((plan["Node Type"], plan.get("Index Name")))
    for child in plan.get("Plans", []):
        found.extend(_scans(child))
    return found


async def _generic_scans(conn: asyncpg.Connection, sql: str, args: list[Any]) -> list[Any]:
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE hot AS {sql}")
    try:
        # EXECUTE takes no bind parameters: literals, typed by the prepared statement.
        values = ", ".join(_literal(a) for a in args)
        rows = await conn.fetch(f"EXPLAIN (FORMAT JSON) EXECUTE hot({values})")
    finally:
        await conn.execute("DEALLOCATE hot")
    return _scans(json.loads(rows[0][0])[0]["Plan"])


async def test_the_claim_finds_its_task_by_primary_key(fresh: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    head = json.dumps({"specversion": "1.0", "id": "e"})
    scans = await _generic_scans(fresh, statements.CLAIM, ["t1", "w1", now, "e1", head])
    assert scans == [("Index Scan", "pk_tasks")]


async def test_the_finish_finds_its_task_by_primary_key(fresh: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    args = ["t1", "w1", 1, "succeeded", None, "{}", now, None, now, "e1", "ten", "k", "{}"]
    scans = await _generic_scans(fresh, statements.FINISH, args)
    assert scans == [("Index Scan", "pk_tasks")]
