"""Housekeeping that keeps the task system truthful: dispatch due tasks (scheduled runs and
retries), return tasks of dead workers to the queue, and publish queue gauges. Runs in every
worker process; a transaction lock (advisory on PostgreSQL) lets one of them act per round."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.broker.port import Broker
from capstan.db.dialect import Dialect
from capstan.db.schema import Task, WorkerRecord
from capstan.events.topology import Topology
from capstan.observability.metrics import Metrics
from capstan.tasks.service import dispatch, stage_event

log = logging.getLogger(__name__)

MAINTENANCE_LOCK_KEY = 0x0CA5_7A5C
BATCH = 500


@dataclass(frozen=True, slots=True)
class MaintenanceConfig:
    source: str  # CloudEvents `source` of the task events
    poll_seconds: float
    redispatch_seconds: float
    heartbeat_ttl_seconds: float
    queues: list[str]  # whose gauges go back to 0 when empty


class TaskMaintenance:
    def __init__(
        self,
        *,
        config: MaintenanceConfig,
        db: async_sessionmaker[AsyncSession],
        broker: Broker,
        topology: Topology,
        metrics: Metrics,
        wake: Callable[[], None],
        dialect: Dialect,
    ) -> None:
        """`wake()` is called after a round that staged outbox rows."""
        self._config = config
        self._db = db
        self._broker = broker
        self._topology = topology
        self._metrics = metrics
        self._wake = wake
        self._dialect = dialect  # its transaction lock lets one maintainer act per round

    async def run(self, stopping: asyncio.Event) -> None:
        poll = self._config.poll_seconds
        while not stopping.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("task maintenance round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), poll)

    async def tick(self) -> tuple[int, int]:
        """One round: (tasks dispatched, tasks reaped)."""
        now = datetime.now(UTC)
        async with self._db.begin() as session:
            if not await self._dialect.try_transaction_lock(session, MAINTENANCE_LOCK_KEY):
                return 0, 0
            due = list(
                await session.scalars(
                    select(Task)
                    .where(
                        Task.status == "queued", Task.dispatched_at.is_(None), Task.run_at <= now
                    )
                    .order_by(Task.run_at)
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                )
            )
            for task in due:
                dispatch(session, task, now)
            reaped = await self._reap(session, now)
            redispatched = await self._redispatch_lost(session, now)
        if due or reaped or redispatched:
            self._wake()
        await self._gauges(now)
        return len(due) + redispatched, reaped

    async def _redispatch_lost(self, session: AsyncSession, now: datetime) -> int:
        """Queued tasks whose message is gone: dispatched long ago, never claimed, and their
        queue holds nothing that could be theirs. (A message can be lost to a bug or an
        operator purging a queue; without this their tasks would wait forever.)"""
        cutoff = now - timedelta(seconds=self._config.redispatch_seconds)
        stale = list(
            await session.scalars(
                select(Task)
                .where(
                    Task.status == "queued",
                    Task.dispatched_at.is_not(None),
                    Task.dispatched_at < cutoff,
                )
                .order_by(Task.dispatched_at)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        )
        if not stale:
            return 0
        empty: set[str] = set()
        for queue in {task.queue for task in stale}:
            try:
                depth = await self._broker.queue_depth(self._topology.task_queue(queue))
            except Exception as exc:  # the broker is down: nothing to decide now
                log.warning(
                    "queue depth unknown; lost tasks checked later", extra={"error": repr(exc)}
                )
                return 0
            if depth == 0:  # a backlog may still hold these tasks' messages: leave them
                empty.add(queue)
        lost = [task for task in stale if task.queue in empty]
        for task in lost:
            log.warning("queued task lost its message; dispatched again", extra={"task": task.id})
            dispatch(session, task, now)
        self._metrics.tasks_redispatched.inc(len(lost))
        return len(lost)

    async def _reap(self, session: AsyncSession, now: datetime) -> int:
        ttl = timedelta(seconds=self._config.heartbeat_ttl_seconds)
        # A running task is lost when its worker stopped beating, or beats without listing it
        # (the worker gave up on it); `started_at` leaves a new claim time to show up.
        alive = {
            worker_id: set(running)
            for worker_id, running in await session.execute(
                select(WorkerRecord.id, WorkerRecord.running).where(
                    WorkerRecord.last_heartbeat_at >= now - ttl
                )
            )
        }
        candidates = await session.scalars(
            select(Task)
            .where(Task.status == "running", Task.started_at < now - ttl)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        lost = [t for t in candidates if t.id not in alive.get(t.worker_id or "", set())]
        for task in lost:
            log.warning(
                "task of a lost worker re-queued", extra={"task": task.id, "worker": task.worker_id}
            )
            if task.cancel_requested:
                task.status, task.finished_at = "cancelled", now
                stage_event(session, self._config.source, task, "cancelled")
            else:
                lost_worker = task.worker_id
                task.status, task.worker_id = "queued", None
                task.error = f"worker {lost_worker} stopped beating; re-queued"
                dispatch(session, task, now)
                stage_event(session, self._config.source, task, "retrying", error=task.error)
            task.updated_at = now
        self._metrics.tasks_reaped.inc(len(lost))
        # Records of workers gone for an hour: nothing refers to them any more.
        await session.execute(
            delete(WorkerRecord).where(WorkerRecord.last_heartbeat_at < now - timedelta(hours=1))
        )
        return len(lost)

    async def _gauges(self, now: datetime) -> None:
        m = self._metrics
        async with self._db() as session:
            rows = (
                await session.execute(
                    select(Task.queue, func.count(), func.min(Task.run_at))
                    .where(Task.status == "queued", Task.run_at <= now)
                    .group_by(Task.queue)
                )
            ).all()
            workers = (
                await session.execute(select(WorkerRecord.id, WorkerRecord.last_heartbeat_at))
            ).all()
        seen = set()
        for queue, count, oldest in rows:
            seen.add(queue)
            m.task_queue_depth.labels(queue).set(count)
            if oldest is not None and oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=UTC)
            m.task_oldest_queued_age.labels(queue).set(
                max((now - oldest).total_seconds(), 0.0) if oldest else 0.0
            )
        for queue in self._config.queues:
            if queue not in seen:
                m.task_queue_depth.labels(queue).set(0)
                m.task_oldest_queued_age.labels(queue).set(0)
        for worker_id, beat in workers:
            if beat.tzinfo is None:
                beat = beat.replace(tzinfo=UTC)
            m.worker_heartbeat.labels(worker_id).set(beat.timestamp())
