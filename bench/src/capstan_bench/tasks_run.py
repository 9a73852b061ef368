"""The context each side of `capstan bench tasks` (Capstan, Celery, the ceiling) measures in: the
options, the processes and database of the run, how often it polls, and its CPU accounting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from capstan_bench.common import BenchError
from capstan_bench.cpu import CpuSnapshot
from capstan_bench.processes import ChildProcess, Samples, scrape_all

if TYPE_CHECKING:
    from rich.progress import Progress

    from capstan.container import Container

POLL_S = 0.02  # completion polling while a throughput round runs (bounds its error)
LATENCY_POLL_S = 0.002
IDLE_GAP_S = 0.05  # between latency samples: the previous task and its events are done
DONE_TIMEOUT_S = 300.0
CELERY_SUBMIT_THREADS = 4
# The servers whose CPU the result reports: name -> process name.
SERVERS = {"postgres": "postgres", "rabbitmq": "beam.smp"}


@dataclass
class Options:
    tasks: int
    concurrency: int
    rounds: int
    latency_samples: int
    submitters: int
    subscribers: bool
    celery_pool: str
    celery_prefetch_multiplier: int
    started_at: datetime


@dataclass
class Run:
    opts: Options
    container: Container
    tenant_id: str
    amqp_url: str
    namespace: str
    children: list[ChildProcess]
    patterns: dict[str, tuple[str, ...]]
    celery_app: Any
    message_size: int
    progress: Progress

    def check_alive(self) -> None:
        for child in self.children:
            child.check_alive()

    async def consumed(self) -> Samples:
        """The subscribers' event counters (capstan_events_consumed_total), every role summed."""
        return await scrape_all(self.children, ("capstan_events_consumed",))

    def cpu(self) -> CpuSnapshot:
        """CPU so far of the bench, each started process's whole session, and the servers."""
        return CpuSnapshot.take(self.children, sessions=True)

    async def execute(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        async with self.container.engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []


def cores(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Cores used between two snapshots: `machine`, `bench`, each process, each server."""
    return after.cores_since(before, bench="bench", servers=SERVERS, digits=2)


async def wait_until(
    run: Run, done: Callable[[], Awaitable[bool]], label: str, timeout_s: float = DONE_TIMEOUT_S
) -> None:
    """Poll `done` every POLL_S; BenchError if a process died or it took over `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await done():
        if time.monotonic() > deadline:
            raise BenchError(f"{label}: not done within {timeout_s:g}s")
        run.check_alive()
        await asyncio.sleep(POLL_S)
