"""The Celery side of `capstan bench tasks`: one Celery app, the same no-op task, and its
throughput and idle latency measured from the bench process.

Celery is NOT a Capstan dependency; it is installed into the bench environment only
(`.venv/bin/pip install celery psycopg2-binary`). This is the only module that imports it.

The worker process runs `python -m celery -A capstan_bench.celery_side worker ...` and reads
its configuration from the environment (CAPSTAN_BENCH_CELERY_*), which the bench sets; the bench
process builds the same app with `make_app` to submit with `.delay`.

Configuration, chosen to match Capstan's guarantees (see bench/README.md):
- broker: the same RabbitMQ; one queue (and direct exchange) of the bench's own name;
- `task_acks_late=True`: acknowledged after the task ran (Capstan acks after the result commit);
- `broker_transport_options={"confirm_publish": True}`: `.delay` returns once RabbitMQ confirmed
  the message (a Capstan submit returns once the task row and its message are committed);
- result backend: the database backend (`db+postgresql+psycopg2://`) on the bench's scratch
  PostgreSQL database (tables `celery_taskmeta` / `celery_tasksetmeta`, created by Celery);
- `worker_prefetch_multiplier` from the environment (default 1: prefetch = concurrency, as
  Capstan's worker);
- no remote control, no task events, no gossip/mingle/heartbeat (the bench passes the flags):
  nothing on the broker besides the task queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery  # bench-only: installed on demand (see bench/README.md)

from capstan_bench.common import BenchError, err
from capstan_bench.tasks_report import rate
from capstan_bench.tasks_run import (
    CELERY_SUBMIT_THREADS,
    IDLE_GAP_S,
    LATENCY_POLL_S,
    Run,
    cores,
    wait_until,
)

NOOP = "capstan_bench.noop"
STARTED = "capstan_bench.started"


def make_app(broker_url: str, backend_url: str, queue: str, prefetch_multiplier: int = 1) -> Any:
    app = Celery("capstan_bench", broker=broker_url, backend=backend_url)
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=prefetch_multiplier,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=None,  # no periodic cleanup task
        worker_hijack_root_logger=False,
    )

    @app.task(name=NOOP)  # type: ignore[untyped-decorator,unused-ignore]
    def noop() -> None:
        return None

    @app.task(name=STARTED)  # type: ignore[untyped-decorator,unused-ignore]
    def started() -> float:
        """The no-op that says when it started (for the idle submit -> start latency)."""
        return time.time()

    return app


def create_tables(app: Any) -> None:
    """Create Celery's result tables before the worker's children race to do it."""
    session = app.backend.ResultSession()
    session.close()


async def celery_throughput(run: Run, n: int, label: str) -> dict[str, Any]:
    task = run.progress.add_task(f"{label}: celery", total=n)
    await run.execute("DELETE FROM celery_taskmeta")
    noop = run.celery_app.tasks[NOOP]
    errors = 0

    def submit(count: int) -> None:
        nonlocal errors
        for _ in range(count):
            try:
                noop.delay()
            except Exception as exc:
                errors += 1
                if errors <= 3:
                    err.print(f"[yellow]celery submit failed: {exc!r}[/yellow]")

    loop = asyncio.get_running_loop()
    shares = [
        n // CELERY_SUBMIT_THREADS + (i < n % CELERY_SUBMIT_THREADS)
        for i in range(CELERY_SUBMIT_THREADS)
    ]
    cpu0 = run.cpu()
    t0 = time.time()
    with ThreadPoolExecutor(CELERY_SUBMIT_THREADS) as pool:
        submitting = asyncio.gather(*(loop.run_in_executor(pool, submit, s) for s in shares))
        submit_done: list[float] = []
        submitting.add_done_callback(lambda _f: submit_done.append(time.time()))
        counts = (0, 0)

        async def finished() -> bool:
            nonlocal counts
            row = (
                await run.execute(
                    "SELECT count(*) FILTER (WHERE status = 'SUCCESS'), "
                    "count(*) FILTER (WHERE status = 'FAILURE') FROM celery_taskmeta"
                )
            )[0]
            counts = (int(row[0]), int(row[1]))
            run.progress.update(task, completed=sum(counts))
            return submitting.done() and sum(counts) >= n - errors

        await wait_until(run, finished, f"{label}: celery tasks")
        wall = time.time() - t0
        await submitting
    cpu1 = run.cpu()
    run.progress.update(task, visible=False)
    return {
        "tasks": n,
        "succeeded": counts[0],
        "failed": counts[1],
        "submit_errors": errors,
        "submit_s": round(submit_done[0] - t0, 3) if submit_done else None,
        "wall_s": round(wall, 3),
        "per_s": rate(counts[0], wall),
        "cpu_cores": cores(cpu0, cpu1),
    }


async def celery_latency(run: Run, samples: int, label: str) -> dict[str, Any]:
    """One task at a time: `.delay()` -> the task body started (it returns time.time())."""
    task_bar = run.progress.add_task(f"{label}: celery idle latency", total=samples)
    started_task = run.celery_app.tasks[STARTED]
    values: list[float] = []
    parts: dict[str, list[float]] = {"submit_call": []}
    for _ in range(samples):
        await asyncio.sleep(IDLE_GAP_S)
        t = time.time()
        handle = started_task.delay()
        parts["submit_call"].append((time.time() - t) * 1000)
        deadline = time.monotonic() + 30
        while True:
            rows = await run.execute(
                "SELECT result FROM celery_taskmeta WHERE task_id = :id AND status = 'SUCCESS'",
                id=handle.id,
            )
            if rows:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{label}: celery task {handle.id} did not finish within 30 s")
            await asyncio.sleep(LATENCY_POLL_S)
        started = float(json.loads(bytes(rows[0][0])))
        values.append((started - t) * 1000)
        run.progress.advance(task_bar)
    run.progress.update(task_bar, visible=False)
    return {"samples_ms": [round(v, 2) for v in values], "parts_ms": parts}


def __getattr__(name: str) -> Any:
    """`celery -A capstan_bench.celery_side` reads `app`: built from the environment on first
    use only, so the bench process (which calls `make_app` itself) never has two apps
    registering the same task names."""
    if name != "app":
        raise AttributeError(name)
    return make_app(
        os.environ.get("CAPSTAN_BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
        os.environ.get("CAPSTAN_BENCH_CELERY_BACKEND", "db+sqlite:///celery-bench.sqlite"),
        os.environ.get("CAPSTAN_BENCH_CELERY_QUEUE", "capstan_bench_celery"),
        int(os.environ.get("CAPSTAN_BENCH_CELERY_PREFETCH_MULTIPLIER", "1")),
    )
