"""Where a running task's progress goes: a signal per tick, and its row at most once a second.

Progress is not a state change: it travels as an ephemeral signal (docs/contracts/signals.md)
and the row keeps only the latest value, for GET /v1/tasks/{id} and for clients that reconnect.
No outbox event, no audit entry, no webhook per tick."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar, cast

from sqlalchemy import Table, update
from sqlalchemy.ext.asyncio import AsyncEngine

from capstan.db.schema import Task
from capstan.observability.metrics import Metrics
from capstan.signals.port import SignalBus, task_progress

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
TASKS = cast(Table, Task.__table__)


class RunningTask(Protocol):
    """What progress needs of a claimed task (an ORM row or a Core row alike)."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def attempts(self) -> int: ...


@dataclass
class _Slot:
    written_at: float
    latest: tuple[float, str | None] | None = None  # kept for the trailing write
    trailing: asyncio.Task[None] | None = None


class Coalescer(Generic[K]):
    """At most one write per key per `interval`, and the latest value always written.

    A tick is written at once when the key's last write is `interval` old; otherwise it is
    kept (replacing the one kept before) and written once the interval has passed, unless the
    key is no longer live by then. So a burst of ticks costs one write per interval, and the
    row still ends at the newest tick however the ticks fall."""

    def __init__(
        self,
        write: Callable[[K, float, str | None], Awaitable[None]],
        interval: float,
        *,
        live: Callable[[K], bool],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._write = write
        self._interval = interval
        self._live = live
        self._clock = clock
        self._sleep = sleep
        self._slots: dict[K, _Slot] = {}

    async def report(self, key: K, fraction: float, message: str | None) -> None:
        now = self._clock()
        self._forget_idle(now)
        slot = self._slots.get(key)
        if slot is None or (slot.trailing is None and now - slot.written_at >= self._interval):
            self._slots[key] = _Slot(written_at=now)
            await self._write_quietly(key, fraction, message)
            return
        slot.latest = (fraction, message)
        if slot.trailing is None:
            slot.trailing = asyncio.create_task(self._trail(key, slot))

    async def _trail(self, key: K, slot: _Slot) -> None:
        try:
            while slot.latest is not None:
                delay = slot.written_at + self._interval - self._clock()
                if delay > 0:
                    await self._sleep(delay)
                if not self._live(key):
                    return  # finished meanwhile: its outcome is what the row shows now
                fraction, message = slot.latest
                slot.latest = None
                slot.written_at = self._clock()
                await self._write_quietly(key, fraction, message)
        finally:
            slot.trailing = None

    def _forget_idle(self, now: float) -> None:
        # A slot with nothing kept and an old write behaves like no slot: drop it, so finished
        # tasks leave nothing behind.
        idle = [
            k
            for k, s in self._slots.items()
            if s.trailing is None and s.latest is None and now - s.written_at >= self._interval
        ]
        for k in idle:
            del self._slots[k]

    async def _write_quietly(self, key: K, fraction: float, message: str | None) -> None:
        try:
            await self._write(key, fraction, message)
        except Exception as exc:  # progress is best effort: never fail the task for it
            log.warning("progress not recorded", extra={"key": repr(key), "error": repr(exc)})

    def __len__(self) -> int:
        return len(self._slots)


class ProgressReporter:
    """One worker's progress path: a signal per tick (ephemeral; a failed publish is dropped
    and counted, never raised), and the task row coalesced to one write per
    `task_progress_write_seconds`."""

    def __init__(
        self,
        worker_id: str,
        running: Callable[[str], bool],
        *,
        signals: SignalBus,
        engine: AsyncEngine,
        metrics: Metrics,
        source: str,
        write_seconds: float,
    ) -> None:
        self._worker_id = worker_id
        self._signals = signals
        self._engine = engine
        self._metrics = metrics
        self._source = source
        self._rows: Coalescer[tuple[str, int]] = Coalescer(
            self._write, write_seconds, live=lambda key: running(key[0])
        )

    async def report(self, task: RunningTask, fraction: float, message: str | None) -> None:
        signal = task_progress(task.tenant_id, task.id, fraction, message, source=self._source)
        await self._signals.publish(signal)
        await self._rows.report((task.id, task.attempts), fraction, message)

    async def _write(self, key: tuple[str, int], fraction: float, message: str | None) -> None:
        task_id, attempt = key
        async with self._engine.begin() as conn:
            # Only this attempt, still running here: a late trailing write never lands on a
            # finished task or on the next attempt.
            await conn.execute(
                update(TASKS)
                .where(
                    TASKS.c.id == task_id,
                    TASKS.c.worker_id == self._worker_id,
                    TASKS.c.attempts == attempt,
                    TASKS.c.status == "running",
                )
                .values(progress=fraction, progress_message=message, updated_at=datetime.now(UTC))
            )
        self._metrics.task_progress_writes.inc()
