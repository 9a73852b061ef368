"""One worker process: consume, claim, run an attempt, commit the outcome, then ack.

Everything else (retries, time limits, cancellation, metrics, the logging context) is
middleware (worker/middleware.py). The worker receives what it uses from the composition root
(capstan.composition): it never fetches services itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.broker.port import Broker, Consumer, Delivery
from capstan.db.errors import is_database_down
from capstan.db.fastpath import FastPath
from capstan.db.schema import Task, WorkerRecord
from capstan.events.topology import Topology
from capstan.retry import Backoff
from capstan.tasks import statements
from capstan.tasks.context import Effect, TaskContext, pending_effects
from capstan.tasks.progress import ProgressReporter
from capstan.tasks.registry import TaskRegistry
from capstan.tasks.service import stage_event, task_event
from capstan.worker.middleware import Middleware, Outcome, compose, hooks
from capstan.worker.queues import task_queue_spec

log = logging.getLogger(__name__)
# Recording an outcome through a database outage: 0.2 s doubling to 5 s, 60 tries, jittered
# so that workers that lost the database together do not all retry at the same instant.
RECORD_RETRY = Backoff(0.2, 5.0, jitter="half")
RECORD_TRIES = 60


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    queues: list[str]
    concurrency: int
    source: str  # CloudEvents `source` of the task events
    shutdown_grace_seconds: float
    heartbeat_seconds: float
    claim_max_errors: int


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        *,
        config: WorkerConfig,
        db: async_sessionmaker[AsyncSession],
        broker: Broker,
        topology: Topology,
        registry: TaskRegistry,
        progress: Callable[[str, Callable[[str], bool]], ProgressReporter],
        middleware: Sequence[Middleware],
        wake: Callable[[], None],
        fast: FastPath | None = None,
        worker_id: str | None = None,
    ) -> None:
        """`progress(worker_id, running)` builds the progress path; `wake()` is called after
        each commit that staged outbox rows (an in-process relay publishes them at once)."""
        self._config = config
        self._db = db
        self._broker = broker
        self._topology = topology
        self._registry = registry
        self._fast = fast
        self._wake = wake
        self._source = config.source
        self.queues = config.queues
        self.concurrency = config.concurrency
        self.id = worker_id or new_worker_id()
        self._running: dict[str, asyncio.Task[str | None]] = {}  # task id -> handler task
        self._cancel_flags: dict[str, bool] = {}
        self._draining = False
        self._slots = asyncio.Semaphore(self.concurrency)
        self._loop_lag = 0.0
        self.middleware = list(middleware)
        self._attempt = compose(self.middleware, self._call_handler)
        self._after_claim = hooks(self.middleware, "after_claim")
        self._decide = hooks(self.middleware, "decide")
        self._after_finish = hooks(self.middleware, "after_finish")
        self._progress_out = progress(self.id, self._running.__contains__)

    async def run(self, stopping: asyncio.Event) -> None:
        """Work until `stopping` is set, then drain gracefully."""
        await self._beat()
        consumers: list[Consumer] = []
        for queue in self.queues:
            spec = task_queue_spec(self._topology, queue)
            consumers.append(
                await self._broker.consume(spec, self.on_delivery, prefetch=self.concurrency)
            )
        heartbeat = asyncio.create_task(self._heartbeat_loop(stopping))
        log.info("worker started", extra={"worker": self.id, "queues": self.queues})
        try:
            await stopping.wait()
        finally:
            await self._drain(consumers)
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            async with self._db.begin() as session:
                await session.execute(delete(WorkerRecord).where(WorkerRecord.id == self.id))

    async def _drain(self, consumers: list[Consumer]) -> None:
        self._draining = True
        grace = self._config.shutdown_grace_seconds
        if self._running:
            log.info("draining", extra={"worker": self.id, "running": len(self._running)})
            await asyncio.wait(list(self._running.values()), timeout=grace)
        for handler_task in list(self._running.values()):
            handler_task.cancel()  # their tasks go back to the queue (see _execute)
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=5)
        for consumer in consumers:
            await consumer.stop()

    async def on_delivery(self, delivery: Delivery) -> None:
        if self._draining:
            await self._hand_back(delivery)
            return
        try:
            task_id = str(json.loads(delivery.message.body)["task_id"])
        except (ValueError, KeyError, TypeError):
            await delivery.dead_letter("malformed task message")
            return
        async with self._slots:
            if self._draining:  # began while this message waited for a slot
                await self._hand_back(delivery)
                return
            try:
                task = await self._claim(task_id)
            except Exception as exc:
                # Never leave the message unsettled: an unacked message sits on the channel
                # until it closes, and its task stays queued (already dispatched) meanwhile.
                if is_database_down(exc):
                    log.warning("claim failed, message retried later", extra={"error": repr(exc)})
                    await delivery.retry(1000, count_attempt=False)
                elif delivery.attempt >= self._config.claim_max_errors:
                    log.exception("claim failed unexpectedly, again: message dead-lettered")
                    await delivery.dead_letter(
                        f"claiming task {task_id} failed {delivery.attempt} times: {exc!r}"
                    )
                else:
                    log.exception("claim failed unexpectedly, message retried later")
                    await delivery.retry(1000)
                return
            if task is None:
                await delivery.ack()  # finished, cancelled, or running elsewhere: nothing to do
                return
            runner: asyncio.Task[str | None] = asyncio.create_task(self._execute(task))
            self._running[task.id] = runner
            try:
                await asyncio.shield(runner)
            except asyncio.CancelledError:
                if not runner.done():
                    raise
            finally:
                self._running.pop(task.id, None)
            if runner.cancelled():
                return  # released back to the queue; the unacked message is redelivered
            state = runner.result()
            if state == "failed":
                # Out of attempts: the message is kept for inspection (`capstan tasks
                # dead-letters`); the task row already says failed, with the error.
                await delivery.dead_letter(
                    f"task {task.id} failed after {task.attempts} attempt(s)"
                )
            else:
                await delivery.ack()

    async def _hand_back(self, delivery: Delivery) -> None:
        # Someone else's, or ours after restart. Not an attempt: the task row counts
        # attempts, and handing a message back says nothing about it.
        await delivery.retry(0, count_attempt=False)

    async def _claim(self, task_id: str) -> Task | None:
        now = datetime.now(UTC)
        fast = self._fast
        if fast is not None:
            row = await statements.claim(fast, task_id, self.id, now, self._source)
            task = None if row is None else statements.task_from_row(row)
        else:
            task = await self._claim_portable(task_id, now)
        if task is None:
            return None
        self._wake()
        for hook in self._after_claim:
            hook(task, now)
        return task

    async def _claim_portable(self, task_id: str, now: datetime) -> Task | None:
        async with self._db.begin() as session:
            # One round trip: the conditional claim hands back the claimed row.
            task: Task | None = await session.scalar(
                update(Task)
                .where(Task.id == task_id, Task.status == "queued", Task.run_at <= now)
                .values(
                    status="running",
                    attempts=Task.attempts + 1,
                    worker_id=self.id,
                    started_at=now,
                    updated_at=now,
                    progress=0.0,
                    progress_message=None,
                )
                .returning(Task),
                execution_options={"synchronize_session": False},
            )
            if task is None:
                return None
            stage_event(session, self._source, task, "started", worker=self.id)
        return task

    async def _execute(self, task: Task) -> str | None:
        """Run one attempt and record its outcome; returns the state recorded (None if the
        task was taken back meanwhile)."""
        started = time.perf_counter()
        try:
            outcome = await self._invoke(task)
        except asyncio.CancelledError:
            await self._release(task)  # shutdown: give the task back
            raise
        outcome.elapsed = time.perf_counter() - started
        for decide in self._decide:
            decide(task, outcome)
        # The outcome is in hand: keep trying to record it through a database outage.
        for tries in range(1, RECORD_TRIES + 1):
            try:
                return await self._finish(task, outcome)
            except Exception as exc:
                if not is_database_down(exc):
                    raise
                log.warning("recording the outcome failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(RECORD_RETRY.delay(tries))
        log.error("gave up recording a task outcome", extra={"task": task.id})
        return None  # no longer listed by our heartbeat: the reaper re-queues it

    async def _invoke(self, task: Task) -> Outcome:
        task_id = task.id
        flags = self._cancel_flags
        flags[task_id] = task.cancel_requested
        ctx = TaskContext(
            task_id=task_id,
            task_type=task.type,
            tenant_id=task.tenant_id,
            attempt=task.attempts,
            max_attempts=task.max_attempts,
            request_id=task.request_id,
            report_progress=lambda f, m: self._progress(task, f, m),
            cancel_requested=lambda: flags.get(task_id, False),
        )
        try:
            return await self._attempt(task, ctx)
        except Exception as exc:
            log.warning("task attempt failed", extra={"task": task_id, "error": repr(exc)})
            return Outcome("error", error=f"{type(exc).__name__}: {exc}")
        finally:
            flags.pop(task_id, None)

    async def _call_handler(self, task: Task, ctx: TaskContext) -> Outcome:
        """The innermost attempt: validate the input, run the handler."""
        task_type = self._registry.get(task.type)
        data = task_type.input_model.model_validate(task.input)
        value = await task_type.handler(data, ctx)
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        return Outcome("succeeded", value, effects=pending_effects(ctx))

    async def _finish(self, task: Task, outcome: Outcome) -> str | None:
        now = datetime.now(UTC)
        error = outcome.error
        value = outcome.value
        effects = outcome.effects
        values: dict[str, Any]
        if outcome.status == "error" and outcome.retry_in is not None:
            values = dict(
                status="queued",
                run_at=now + timedelta(seconds=outcome.retry_in),
                dispatched_at=None,
                error=error,
                worker_id=None,
            )
            action = state = "retrying"
        elif outcome.status == "error":
            values = dict(status="failed", error=error, finished_at=now)
            action = state = "failed"
        elif outcome.status == "cancelled":
            values = dict(status="cancelled", error=error, finished_at=now)
            action = state = "cancelled"
        else:
            values = dict(
                status="succeeded", result=value, error=None, finished_at=now, progress=1.0
            )
            action = state = "succeeded"
        extra: dict[str, Any] = {"error": error} if error else {}
        if action == "succeeded":
            extra["result"] = value
        if action == "retrying":
            extra["run_at"] = values["run_at"].isoformat()
            extra["retry_in_seconds"] = round(outcome.retry_in or 0.0, 3)
        fast = self._fast
        if fast is not None and not effects:
            # The event describes the row as this statement leaves it.
            event = task_event(self._source, task, action, **extra, status=values["status"])
            owned = await statements.finish(
                fast,
                task,
                self.id,
                status=values["status"],
                error=values.get("error"),
                result=values.get("result"),
                finished_at=values.get("finished_at"),
                run_at=values.get("run_at"),
                now=now,
                event=event,
            )
        else:
            owned = await self._finish_portable(task, values, effects, action, extra, now)
        if not owned:
            log.warning("task was taken back before it finished", extra={"task": task.id})
            return None
        self._wake()
        for hook in self._after_finish:
            hook(task, outcome, state)
        return state

    async def _finish_portable(
        self,
        task: Task,
        values: dict[str, Any],
        effects: list[Effect],
        action: str,
        extra: dict[str, Any],
        now: datetime,
    ) -> bool:
        async with self._db.begin() as session:
            # Only if this worker still owns this attempt (the reaper may have taken it back).
            fresh: Task | None = await session.scalar(
                update(Task)
                .where(
                    Task.id == task.id,
                    Task.status == "running",
                    Task.worker_id == self.id,
                    Task.attempts == task.attempts,
                )
                .values(updated_at=now, **values)
                .returning(Task),
                execution_options={"synchronize_session": False},
            )
            if fresh is None:
                return False
            for effect in effects:
                await effect(session)
            stage_event(session, self._source, fresh, action, **extra)
        return True

    async def _release(self, task: Task) -> None:
        now = datetime.now(UTC)
        with contextlib.suppress(Exception):
            async with self._db.begin() as session:
                await session.execute(
                    update(Task)
                    .where(Task.id == task.id, Task.status == "running", Task.worker_id == self.id)
                    .values(
                        status="queued",
                        worker_id=None,
                        attempts=Task.attempts - 1,
                        dispatched_at=now,
                        updated_at=now,
                    )
                )

    async def _progress(self, task: Task, fraction: float, message: str | None) -> None:
        # Not a state change: an ephemeral signal per tick and the row's latest value at most
        # once a second, no outbox event (capstan.tasks.progress, docs/contracts/signals.md).
        await self._progress_out.report(task, fraction, message)

    async def _heartbeat_loop(self, stopping: asyncio.Event) -> None:
        interval = self._config.heartbeat_seconds
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            expected = loop.time() + interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
            # How late we woke up: a busy or blocked loop shows here before it shows anywhere.
            self._loop_lag = max(loop.time() - expected, 0.0)
            try:
                await self._beat()
                await self._refresh_cancellations()
            except Exception as exc:
                log.warning("heartbeat failed", extra={"worker": self.id, "error": repr(exc)})

    async def _beat(self) -> None:
        from capstan.db.upsert import insert_ignore

        now = datetime.now(UTC)
        running = sorted(self._running)
        async with self._db.begin() as session:
            inserted = await insert_ignore(
                session,
                WorkerRecord.__table__,  # type: ignore[arg-type]
                {
                    "id": self.id,
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                    "queues": self.queues,
                    "concurrency": self.concurrency,
                    "running": running,
                    "loop_lag_seconds": self._loop_lag,
                    "started_at": now,
                    "last_heartbeat_at": now,
                },
            )
            if not inserted:
                await session.execute(
                    update(WorkerRecord)
                    .where(WorkerRecord.id == self.id)
                    .values(running=running, loop_lag_seconds=self._loop_lag, last_heartbeat_at=now)
                )

    async def _refresh_cancellations(self) -> None:
        if not self._running:
            return
        async with self._db() as session:
            rows = await session.execute(
                select(Task.id).where(Task.id.in_(list(self._running)), Task.cancel_requested)
            )
        for (task_id,) in rows:
            self._cancel_flags[task_id] = True
