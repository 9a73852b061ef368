"""Task progress, in both modes: every tick is an ephemeral signal of the task's tenant, the
row keeps the latest progress (written at most once a second), and no tick becomes a durable
event (no outbox row, no audit entry, so no webhook and no `seq`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from capstan.db.schema import AuditEntry, OutboxEvent
from capstan.signals.port import TASK_PROGRESS, Signal, SignalStream, task_progress
from tests.conftest import RedisProcess, Stack, stack_settings, start_stack, stop_stack

WAIT = 60.0  # bounds on waiting, never timing expectations


def sample(stack: Stack, name: str, **labels: str) -> float:
    return stack.container.metrics.registry.get_sample_value(name, labels) or 0.0


async def collect(stream: SignalStream, into: list[Signal]) -> None:
    async for signal in stream:
        into.append(signal)


async def test_a_long_tasks_progress_reaches_its_row_and_its_tenants_signals_only(
    stack: Stack,
) -> None:
    c = stack.container
    tenant, other = await stack.api.tenant(), await stack.api.tenant()
    writes_before = sample(stack, "capstan_task_progress_writes_total")
    got: list[Signal] = []
    async with (
        c.signals.subscribe(tenant.id) as mine,
        c.signals.subscribe(other.id) as others,
        stack.api.client(tenant.key) as http,
    ):
        reader = asyncio.create_task(collect(mine, got))
        started = time.monotonic()
        task = (
            await http.post("/v1/tasks", json={"type": "test.sleep", "input": {"seconds": 600}})
        ).json()
        url = task["url"]
        row: dict[str, Any] = {}

        async def row_shows_progress() -> bool:
            nonlocal row
            row = (await http.get(url)).json()
            return row["status"] == "running" and row["progress"] > 0

        # Given a task that reports progress for as long as it runs,
        # when its second-by-second row write has happened,
        await stack.until(row_shows_progress, timeout=WAIT, what="progress on the task row")
        assert row["progress_message"] == "sleeping"

        # then the value on the row is one of the ticks its tenant's subscribers received.
        async def row_value_was_signalled() -> bool:
            return row["progress"] in [s.data["progress"] for s in got]

        await stack.until(row_value_was_signalled, timeout=WAIT, what="the row's tick as a signal")
        assert (await http.post(f"{url}/cancel")).status_code == 202

        async def cancelled() -> bool:
            return (await http.get(url)).json()["status"] == "cancelled"

        await stack.until(cancelled, timeout=WAIT, what="the task to stop")
        elapsed = time.monotonic() - started

        # Another tenant's subscriber got none of it: the first signal it sees is one published
        # after the task stopped.
        marker = task_progress(other.id, "marker", 0.5, None, source="test")
        await c.signals.publish(marker)
        assert await asyncio.wait_for(others.next(), WAIT) == marker
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    assert got and all(s.type == TASK_PROGRESS for s in got)
    assert {(s.tenant_id, s.subject, s.data["id"]) for s in got} == {
        (tenant.id, f"tasks/{task['id']}", task["id"])
    }
    assert {s.data["message"] for s in got} == {"sleeping"}
    progress = [s.data["progress"] for s in got]
    assert progress == sorted(progress)
    # At most one row write per second (and never more writes than ticks); a slower machine
    # only makes fewer of them.
    writes = sample(stack, "capstan_task_progress_writes_total") - writes_before
    assert 1 <= writes <= min(len(got), elapsed / c.settings.task_progress_write_seconds + 2)
    assert sample(stack, "capstan_signals_published_total", type="task.progress") >= len(got)

    # No durable trace of any tick: state changes only, in the outbox and in the audit log.
    async def audited_cancel() -> bool:
        async with c.db() as session:
            types = await session.scalars(
                select(AuditEntry.type).where(AuditEntry.subject == f"tasks/{task['id']}")
            )
            return "capstan.task.cancelled" in list(types)

    await stack.until(audited_cancel, timeout=WAIT, what="task.cancelled in the audit log")
    async with c.db() as session:
        audited = list(
            await session.scalars(
                select(AuditEntry.type)
                .where(AuditEntry.subject == f"tasks/{task['id']}")
                .order_by(AuditEntry.seq)
            )
        )
        staged = await session.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.tenant_id == tenant.id, OutboxEvent.routing_key == "task.progress")
        )
    assert audited == ["capstan.task.queued", "capstan.task.started", "capstan.task.cancelled"]
    assert staged == 0


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_with_redis_down_the_task_still_succeeds_and_its_signals_are_counted_as_dropped(
    request: pytest.FixtureRequest, redis_process: RedisProcess, tmp_path: Path
) -> None:
    settings = stack_settings("production", request, tmp_path).model_copy(
        update={"cache_url": redis_process.url, "cache_timeout_seconds": 0.3}
    )
    stack = await start_stack(settings)
    try:
        tenant = await stack.api.tenant()
        redis_process.stop()
        async with stack.api.client(tenant.key) as http:
            task = (
                await http.post("/v1/tasks", json={"type": "test.sleep", "input": {"seconds": 1}})
            ).json()

            async def done() -> bool:
                return (await http.get(task["url"])).json()["status"] in ("succeeded", "failed")

            await stack.until(done, timeout=WAIT, what="the task to finish")
            final = (await http.get(task["url"])).json()
        assert (final["status"], final["progress"]) == ("succeeded", 1.0)
        dropped = sample(
            stack, "capstan_signals_dropped_total", type="task.progress", reason="unavailable"
        )
        assert dropped >= 1
        assert sample(stack, "capstan_signals_published_total", type="task.progress") == 0
    finally:
        await stop_stack(stack)
