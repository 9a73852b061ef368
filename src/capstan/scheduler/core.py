"""A small cron-like scheduler: jobs on 5-field cron expressions (UTC), one run at a time per
job across processes (a PostgreSQL advisory lock; in-process lock when embedded).

Like cron, a run missed while no scheduler was up is not caught up; the backup alert
(`CapstanBackupTooOld`) catches that. Time is injected (`clock`, `sleep`) so tests never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from croniter import croniter
from sqlalchemy.ext.asyncio import AsyncEngine

from capstan.db.dialect import Dialect

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Sleep = Callable[[float, asyncio.Event], Awaitable[None]]
# A job receives the time it was scheduled for (its cron slot), not the time it started.
JobFn = Callable[[datetime], Awaitable[None]]

# The longest single sleep: a wall-clock jump (suspend, NTP step) is noticed within this.
MAX_SLEEP_SECONDS = 60.0


def utc_now() -> datetime:
    return datetime.now(UTC)


async def sleep_until_stopped(seconds: float, stopping: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


def validate_cron(expression: str) -> str:
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise ValueError(f"not a 5-field cron expression: {expression!r}")
    return expression


def next_run(expression: str, after: datetime) -> datetime:
    """The first slot of `expression` strictly after `after` (UTC)."""
    return croniter(expression, after.astimezone(UTC)).get_next(datetime)


@dataclass
class Job:
    name: str
    schedule: str
    fn: JobFn

    def __post_init__(self) -> None:
        validate_cron(self.schedule)


class JobLock(Protocol):
    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """Try to take the job's lock without waiting; yields whether it was taken."""
        ...


class LocalLock:
    """Embedded mode: one process, so an asyncio lock per job name (shared by instances)."""

    _locks: dict[str, asyncio.Lock] = {}  # noqa: RUF012 - deliberately process-wide

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[bool]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        if lock.locked():
            yield False
            return
        async with lock:
            yield True


def advisory_key(name: str) -> int:
    digest = hashlib.sha256(f"capstan.scheduler:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class DatabaseLock:
    """The database's lock per job, held for the job's duration: one scheduler among every
    process on the database runs it (a session advisory lock on PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, dialect: Dialect) -> None:
        self._engine = engine
        self._dialect = dialect

    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[bool]:
        return self._dialect.hold_lock(self._engine, advisory_key(name))


class Scheduler:
    """Runs each job at its cron slots until `stopping` is set (`roles.Background.add_loop`)."""

    def __init__(
        self,
        jobs: list[Job],
        lock: JobLock,
        *,
        clock: Clock = utc_now,
        sleep: Sleep = sleep_until_stopped,
    ) -> None:
        self.jobs = jobs
        self.lock = lock
        self.clock = clock
        self.sleep = sleep
        self.due: dict[str, datetime] = {}
        self.runs: list[tuple[str, datetime]] = []  # (job, slot) actually run here

    def plan(self, now: datetime | None = None) -> None:
        """Schedule each job's next slot after now."""
        now = now or self.clock()
        self.due = {job.name: next_run(job.schedule, now) for job in self.jobs}

    async def run_due(self, now: datetime | None = None) -> list[str]:
        """Run every job whose slot has come (each under its lock); plan its next slot."""
        now = now or self.clock()
        if not self.due:
            self.plan(now)
        ran = []
        for job in self.jobs:
            slot = self.due[job.name]
            if slot > now:
                continue
            self.due[job.name] = next_run(job.schedule, now)
            async with self.lock.hold(job.name) as taken:
                if not taken:
                    log.info("job already running elsewhere", extra={"job": job.name})
                    continue
                try:
                    await job.fn(slot)
                except Exception:
                    log.exception("scheduled job failed", extra={"job": job.name})
                self.runs.append((job.name, slot))
                ran.append(job.name)
        return ran

    def seconds_to_next(self, now: datetime | None = None) -> float:
        now = now or self.clock()
        if not self.due:
            return MAX_SLEEP_SECONDS
        wake = min(self.due.values())
        return max(0.0, min((wake - now).total_seconds(), MAX_SLEEP_SECONDS))

    async def run(self, stopping: asyncio.Event) -> None:
        self.plan()
        log.info(
            "scheduler running",
            extra={"jobs": {name: slot.isoformat() for name, slot in self.due.items()}},
        )
        while not stopping.is_set():
            await self.run_due()
            await self.sleep(self.seconds_to_next(), stopping)
