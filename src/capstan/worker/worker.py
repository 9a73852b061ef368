"""One worker process: consume, claim, run with limits, commit the outcome, then ack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from capstan.broker.port import Consumer, Delivery
from capstan.container import Container
from capstan.db.errors import is_database_down
from capstan.db.schema import Task, WorkerRecord
from capstan.observability.context import reset_request_id, set_request_id
from capstan.retry import Backoff
from capstan.tasks import statements
from capstan.tasks.context import Effect, TaskCancelled, TaskContext
from capstan.tasks.progress import ProgressReporter
from capstan.tasks.registry import TaskRegistry
from capstan.tasks.service import stage_event, task_event
from capstan.worker.queues import task_queue_spec

log = logging.getLogger(__name__)
# Recording an outcome through a database outage: 0.2, 0.4 ... 5 s, 60 tries (a few minutes).
RECORD_RETRY = Backoff(0.2, 5.0, jitter="half")


class Worker:
    def __init__(
        self,
        c: Container,
        registry: TaskRegistry,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
    ) -> None:
        s = c.settings
        self._c = c
        self._registry = registry
        self.queues = queues or s.worker_queues
        self.concurrency = concurrency or s.worker_concurrency
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._running: dict[str, asyncio.Task[str | None]] = {}  # task id -> handler task
        self._cancel_flags: dict[str, bool] = {}
        self._draining = False
        self._slots = asyncio.Semaphore(self.concurrency)
        self._loop_lag = 0.0
        m = c.metrics
        self._m_tasks = m.tasks_total
        self._m_duration = m.task_duration
        self._m_wait = m.task_queue_wait
        self._m_running = m.tasks_running
        self._progress_out = ProgressReporter(c, self.id, running=self._running.__contains__)

    async def run(self, stopping: asyncio.Event) -> None:
        """Work until `stopping` is set, then drain gracefully."""
        await self._beat()
        consumers: list[Consumer] = []
        for queue in self.queues:
            spec = task_queue_spec(self._c.topology, queue)
            consumers.append(
                await self._c.broker.consume(spec, self.on_delivery, prefetch=self.concurrency)
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
            async with self._c.db.begin() as session:
                await session.execute(delete(WorkerRecord).where(WorkerRecord.id == self.id))

    async def _drain(self, consumers: list[Consumer]) -> None:
        self._draining = True
        grace = self._c.settings.worker_shutdown_grace_seconds
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
                elif delivery.attempt >= self._c.settings.task_claim_max_errors:
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
        fast = self._c.fast
        if fast is not None:
            row = await statements.claim(fast, task_id, self.id, now, self._c.settings.source)
            task = None if row is None else statements.task_from_row(row)
        else:
            task = await self._claim_portable(task_id, now)
        if task is None:
            return None
        self._c.outbox_wakeup.set()
        self._m_tasks.labels(task.type, "running").inc()
        self._m_wait.labels(task.type).observe(max((now - task.run_at).total_seconds(), 0.0))
        return task

    async def _claim_portable(self, task_id: str, now: datetime) -> Task | None:
        async with self._c.db.begin() as session:
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
            stage_event(session, self._c.settings.source, task, "started", worker=self.id)
        return task

    async def _execute(self, task: Task) -> str | None:
        """Run one attempt and record its outcome; returns the state recorded (None if the
        task was taken back meanwhile)."""
        token = set_request_id(task.request_id)
        self._cancel_flags[task.id] = task.cancel_requested
        self._m_running.inc()
        started = time.perf_counter()
        try:
            outcome, value, error, effects = await self._invoke(task)
        except asyncio.CancelledError:
            await self._release(task)  # shutdown: give the task back
            raise
        finally:
            self._m_running.dec()
            self._cancel_flags.pop(task.id, None)
            reset_request_id(token)
        elapsed = time.perf_counter() - started
        # The outcome is in hand: keep trying to record it through a database outage.
        for attempt in range(1, 61):
            try:
                return await self._finish(task, outcome, value, error, effects, elapsed)
            except Exception as exc:
                if not is_database_down(exc):
                    raise
                log.warning("recording the outcome failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(RECORD_RETRY.delay(attempt))
        log.error("gave up recording a task outcome", extra={"task": task.id})
        return None  # no longer listed by our heartbeat: the reaper re-queues it

    async def _invoke(self, task: Task) -> tuple[str, Any, str | None, list[Effect]]:
        ctx = TaskContext(
            task_id=task.id,
            tenant_id=task.tenant_id,
            attempt=task.attempts,
            container=self._c,
            report_progress=lambda f, m: self._progress(task, f, m),
            cancel_requested=lambda: self._cancel_flags.get(task.id, False),
        )
        try:
            task_type = self._registry.get(task.type)
            data = task_type.input_model.model_validate(task.input)
            value = await asyncio.wait_for(task_type.handler(data, ctx), task.time_limit_seconds)
        except TaskCancelled:
            return "cancelled", None, "cancelled while running", []
        except TimeoutError:
            return "error", None, f"time limit of {task.time_limit_seconds:g} s exceeded", []
        except Exception as exc:
            log.warning("task attempt failed", extra={"task": task.id, "error": repr(exc)})
            return "error", None, f"{type(exc).__name__}: {exc}", []
        if hasattr(value, "model_dump"):
            value = value.model_dump(mode="json")
        return "succeeded", value, None, ctx.effects

    async def _finish(
        self,
        task: Task,
        outcome: str,
        value: Any,
        error: str | None,
        effects: list[Effect],
        elapsed: float,
    ) -> str | None:
        now = datetime.now(UTC)
        s = self._c.settings
        delay = 0.0
        if outcome == "error" and task.attempts < task.max_attempts:
            delay = Backoff(s.task_retry_base_seconds, s.task_retry_max_seconds).delay(
                task.attempts
            )
            values: dict[str, Any] = dict(
                status="queued",
                run_at=now + timedelta(seconds=delay),
                dispatched_at=None,
                error=error,
                worker_id=None,
            )
            action, state = "retrying", "retrying"
        elif outcome == "error":
            values = dict(status="failed", error=error, finished_at=now)
            action, state = "failed", "failed"
        elif outcome == "cancelled":
            values = dict(status="cancelled", error=error, finished_at=now)
            action, state = "cancelled", "cancelled"
        else:
            values = dict(
                status="succeeded", result=value, error=None, finished_at=now, progress=1.0
            )
            action, state = "succeeded", "succeeded"
        extra: dict[str, Any] = {"error": error} if error else {}
        if action == "succeeded":
            extra["result"] = value
        if action == "retrying":
            extra["run_at"] = values["run_at"].isoformat()
            extra["retry_in_seconds"] = round(delay, 3)
        fast = self._c.fast
        if fast is not None and not effects:
            # The event describes the row as this statement leaves it.
            event = task_event(s.source, task, action, **extra, status=values["status"])
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
        self._c.outbox_wakeup.set()
        self._m_tasks.labels(task.type, state).inc()
        self._m_duration.labels(task.type).observe(elapsed)
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
        async with self._c.db.begin() as session:
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
            stage_event(session, self._c.settings.source, fresh, action, **extra)
        return True

    async def _release(self, task: Task) -> None:
        now = datetime.now(UTC)
        with contextlib.suppress(Exception):
            async with self._c.db.begin() as session:
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
        interval = self._c.settings.worker_heartbeat_seconds
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
        async with self._c.db.begin() as session:
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
        async with self._c.db() as session:
            rows = await session.execute(
                select(Task.id).where(Task.id.in_(list(self._running)), Task.cancel_requested)
            )
        for (task_id,) in rows:
            self._cancel_flags[task_id] = True
