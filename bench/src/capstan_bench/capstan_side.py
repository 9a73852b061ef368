"""The Capstan side of `capstan bench tasks`: no-op tasks submitted through `TaskService.submit`
(the Python client the API calls) to the relay, worker and subscribers the run started;
throughput until every task succeeded (then until the subscribers drained its events), and the
idle submit -> running latency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from capstan_bench.common import BenchError, err
from capstan_bench.outbox import handled, max_outbox_id, outbox_progress
from capstan_bench.tasks_report import cpu_ms_per_task, rate
from capstan_bench.tasks_run import IDLE_GAP_S, LATENCY_POLL_S, Run, cores, wait_until

NOOP_TYPE = "test.noop"


async def _submit(run: Run, n: int, on_submit: Callable[[], None]) -> tuple[int, float]:
    """Submit n no-op tasks from `submitters` concurrent callers; (errors, seconds)."""
    from capstan.tasks.schemas import TaskSubmit

    errors = 0
    remaining = n
    started = time.time()

    async def submitter() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            try:
                await run.container.tasks.submit(run.tenant_id, TaskSubmit(type=NOOP_TYPE))
            except Exception as exc:
                errors += 1
                if errors <= 3:
                    err.print(f"[yellow]submit failed: {type(exc).__name__}: {exc}[/yellow]")
            on_submit()

    await asyncio.gather(*(submitter() for _ in range(min(run.opts.submitters, n))))
    return errors, time.time() - started


async def _counts(run: Run, since: datetime) -> tuple[int, int]:
    """(succeeded, failed or cancelled) of the tenant's tasks created since `since`."""
    row = (
        await run.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), "
            "count(*) FILTER (WHERE status IN ('failed', 'cancelled')) "
            "FROM tasks WHERE tenant_id = :t AND created_at >= :since",
            t=run.tenant_id,
            since=since,
        )
    )[0]
    return int(row[0]), int(row[1])


async def _unfinished(run: Run, since: datetime) -> int:
    """The tenant's tasks created since `since` still queued or running: what the completion
    poll asks 50 times a second. Counting the finished ones instead walked every task of the
    tenant at each poll (1.9 ms of PostgreSQL per poll by round 2, ~0.2 ms per task charged to
    Capstan's PostgreSQL CPU: the harness's cost, not Capstan's); this reads the status index,
    as Celery's poll of its small result table costs about 0.1 ms."""
    row = (
        await run.execute(
            "SELECT count(*) FROM tasks WHERE status IN ('queued', 'running') "
            "AND tenant_id = :t AND created_at >= :since",
            t=run.tenant_id,
            since=since,
        )
    )[0]
    return int(row[0])


async def capstan_throughput(run: Run, n: int, label: str) -> dict[str, Any]:
    task = run.progress.add_task(f"{label}: capstan", total=n)
    lo = await max_outbox_id(run.container)
    consumed0 = await run.consumed() if run.patterns else {}
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    cpu0 = run.cpu()
    t0 = time.time()
    submitted = 0

    def on_submit() -> None:
        nonlocal submitted
        submitted += 1

    submitting = asyncio.create_task(_submit(run, n, on_submit))

    async def finished() -> bool:
        unfinished = await _unfinished(run, since)
        run.progress.update(task, completed=submitted - unfinished)
        return submitting.done() and unfinished == 0

    await wait_until(run, finished, f"{label}: capstan tasks")
    wall = time.time() - t0
    cpu1 = run.cpu()
    counts = await _counts(run, since)
    submit_errors, submit_s = submitting.result()
    result: dict[str, Any] = {
        "tasks": n,
        "succeeded": counts[0],
        "failed": counts[1],
        "submit_errors": submit_errors,
        "submit_s": round(submit_s, 3),
        "wall_s": round(wall, 3),
        "per_s": rate(counts[0], wall),
        "cpu_cores": cores(cpu0, cpu1),
    }
    result["cpu_ms_per_task"] = cpu_ms_per_task(result["cpu_cores"], wall, n)
    if run.patterns:
        # The subscribers' share of the work: every task event of the round handled.
        hi = await max_outbox_id(run.container)
        run.progress.update(task, description=f"{label}: capstan subscribers draining")

        async def drained() -> bool:
            done_by = handled(consumed0, await run.consumed())
            now = await outbox_progress(run.container, lo, hi, run.patterns, done_by)
            run.progress.update(task, total=max(now.expected, 1), completed=now.done)
            return now.published == now.rows and now.done >= now.expected

        await wait_until(run, drained, f"{label}: capstan task events")
        drained_s = time.time() - t0
        result["drained_s"] = round(drained_s, 3)
        result["drained_per_s"] = rate(counts[0], drained_s)
        result["cpu_cores_until_drained"] = cores(cpu0, run.cpu())
        result["cpu_ms_per_task_until_drained"] = cpu_ms_per_task(
            result["cpu_cores_until_drained"], drained_s, n
        )
    run.progress.update(task, visible=False)
    return result


async def capstan_latency(run: Run, samples: int, label: str) -> dict[str, Any]:
    """One task at a time on an idle system: submit -> running (`started_at`), split into the
    submit call (the commit of the task row and its outbox message) and commit -> running
    (NOTIFY -> relay -> RabbitMQ -> worker -> claim)."""
    from sqlalchemy import select

    from capstan.db.schema import Task
    from capstan.tasks.schemas import TaskSubmit

    task_bar = run.progress.add_task(f"{label}: capstan idle latency", total=samples)
    values: list[float] = []
    parts: dict[str, list[float]] = {"submit_call": [], "commit_to_running": []}
    for _ in range(samples):
        await asyncio.sleep(IDLE_GAP_S)
        t = time.time()
        task, _created = await run.container.tasks.submit(run.tenant_id, TaskSubmit(type=NOOP_TYPE))
        returned = time.time()
        deadline = time.monotonic() + 30
        while True:
            async with run.container.db() as session:
                started, finished = (
                    await session.execute(
                        select(Task.started_at, Task.finished_at).where(Task.id == task.id)
                    )
                ).one()
            if finished is not None and started is not None:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{label}: task {task.id} did not finish within 30 s")
            await asyncio.sleep(LATENCY_POLL_S)
        values.append((started.timestamp() - t) * 1000)
        parts["submit_call"].append((returned - t) * 1000)
        parts["commit_to_running"].append((started.timestamp() - returned) * 1000)
        run.progress.advance(task_bar)
    run.progress.update(task_bar, visible=False)
    return {"samples_ms": [round(v, 2) for v in values], "parts_ms": parts}
