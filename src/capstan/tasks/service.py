"""Submitting, reading, listing and cancelling tasks (the API side)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.broker.port import Broker, Message
from capstan.db.fastpath import FastPath
from capstan.db.schema import Task
from capstan.db.unit import UnitOfWork
from capstan.documents.service import decode_cursor, encode_cursor
from capstan.errors import Conflict, InvalidInput, NotFound
from capstan.events.envelope import encode
from capstan.events.outbox import add_envelope, add_task_message, envelope
from capstan.events.topology import Topology
from capstan.ids import uuid7
from capstan.observability.context import current_request_id
from capstan.settings import Settings
from capstan.tasks import statements
from capstan.tasks.registry import TaskRegistry, TaskType
from capstan.tasks.schemas import TaskRead, TaskSubmit
from capstan.worker.queues import task_queue_spec

log = logging.getLogger(__name__)

FINISHED = ("succeeded", "failed", "cancelled")


def to_read(task: Task) -> TaskRead:
    return TaskRead(
        id=task.id,
        url=f"/v1/tasks/{task.id}",
        type=task.type,
        queue=task.queue,
        priority=task.priority,
        status=task.status,
        input=task.input,
        result=task.result,
        error=task.error,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        time_limit_seconds=task.time_limit_seconds,
        idempotency_key=task.idempotency_key,
        progress=task.progress,
        progress_message=task.progress_message,
        cancel_requested=task.cancel_requested,
        worker_id=task.worker_id,
        run_at=task.run_at,
        created_at=task.created_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        updated_at=task.updated_at,
    )


def task_event_data(task: Task, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": task.id,
        "type": task.type,
        "status": task.status,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
    }
    data.update(extra)
    return data


def task_event(source: str, task: Task, action: str, **extra: Any) -> dict[str, Any]:
    """The envelope of a task event; task events carry the request id of the submission."""
    return envelope(
        source=source,
        entity="task",
        action=action,
        tenant_id=task.tenant_id,
        subject=f"tasks/{task.id}",
        data=task_event_data(task, **extra),
        request_id=task.request_id,
    )


def stage_event(session: AsyncSession, source: str, task: Task, action: str, **extra: Any) -> None:
    add_envelope(session, task_event(source, task, action, **extra))


def task_message(task: Task) -> Message:
    """The message that hands `task` to a worker (the relay sends the same for outbox rows)."""
    return Message(
        routing_key=task.queue,
        body=encode({"task_id": task.id, "priority": task.priority}),
        message_id=uuid7(),
        headers={"tenantid": task.tenant_id},
        content_type="application/json",
        priority=task.priority,
    )


def dispatch(session: AsyncSession, task: Task, now: datetime) -> None:
    """Stage the worker message for a due task (committed with the caller's transaction)."""
    task.dispatched_at = now
    add_task_message(
        session, tenant_id=task.tenant_id, queue=task.queue, task_id=task.id, priority=task.priority
    )


def new_task(
    task_type: TaskType,
    settings: Settings,
    *,
    tenant_id: str,
    input: dict[str, Any],
    idempotency_key: str | None,
    now: datetime,
    queue: str | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    time_limit_seconds: float | None = None,
    request_id: str | None = None,
    run_at: datetime | None = None,
) -> Task:
    """A new queued task of `task_type` (its input validated by the caller): the row the API's
    submit and a subscriber's staging write alike, with the type's and then the settings'
    defaults where the caller gives none."""
    return Task(
        id=uuid7(),
        tenant_id=tenant_id,
        type=task_type.name,
        queue=queue or task_type.queue,
        priority=priority,
        status="queued",
        input=input,
        attempts=0,
        max_attempts=max_attempts or task_type.max_attempts or settings.task_default_max_attempts,
        time_limit_seconds=time_limit_seconds
        or task_type.time_limit_seconds
        or settings.task_default_time_limit_seconds,
        idempotency_key=idempotency_key,
        progress=0.0,
        cancel_requested=False,
        request_id=request_id,
        run_at=run_at or now,
        created_at=now,
        updated_at=now,
    )


class TaskService:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        registry: TaskRegistry,
        settings: Settings,
        on_commit: Any = lambda: None,
        *,
        broker: Broker | None = None,
        topology: Topology | None = None,
        fast: FastPath | None = None,
    ) -> None:
        self._db = db
        self._registry = registry
        self._settings = settings
        self._on_commit = on_commit
        self._broker = broker
        self._topology = topology
        self._fast = fast
        self._declared: set[str] = set()

    async def submit(self, tenant_id: str, body: TaskSubmit) -> tuple[Task, bool]:
        """The new task (True), or the one already submitted with this idempotency key (False).

        A submission is a unit of work of its own, the exception to callers owning it: on
        PostgreSQL it is ONE statement (the task and its event; issue 11), the idempotency race
        is settled by reading the winner after the failed insert, and a due task is handed to
        the broker after the commit."""
        task_type = self._registry.get(body.type)
        try:
            task_type.input_model.model_validate(body.input)
        except ValidationError as exc:
            errors = [
                {"loc": ["input", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ]
            first = errors[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInput(f"{where}: {first['msg']}", errors=errors) from exc
        if body.idempotency_key and (found := await self._by_key(tenant_id, body.idempotency_key)):
            return found, False
        now = datetime.now(UTC)
        run_at = body.run_at or now
        if run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=UTC)
        s = self._settings
        task = new_task(
            task_type,
            s,
            tenant_id=tenant_id,
            input=body.input,
            idempotency_key=body.idempotency_key,
            now=now,
            queue=body.queue,
            priority=body.priority,
            max_attempts=body.max_attempts,
            time_limit_seconds=body.time_limit_seconds,
            request_id=current_request_id(),
            run_at=run_at,
        )
        due = run_at <= now
        if due:
            task.dispatched_at = now
        queued = task_event(s.source, task, "queued")
        if self._fast is not None:
            row = await self._fast.fetchrow(
                statements.SUBMIT, *statements.submit_args(task, queued)
            )
            if row is None:
                # The idempotency key is taken (maybe by a concurrent request): same task.
                found = await self._by_key(tenant_id, body.idempotency_key or "")
                if found is None:
                    raise Conflict("the task could not be stored; retry")
                return found, False
        else:
            try:
                async with self._db.begin() as session:
                    session.add(task)
                    add_envelope(session, queued)
            except IntegrityError:
                # Another request with the same idempotency key won the race: same task.
                if body.idempotency_key and (
                    found := await self._by_key(tenant_id, body.idempotency_key)
                ):
                    return found, False
                raise
        self._on_commit()
        if due:
            await self._dispatch_now(task)
        return task, True

    async def _dispatch_now(self, task: Task) -> None:
        """Hand the committed task to its queue at once, without the relay's round trip.

        If the broker does not confirm, the message goes through the outbox instead (the relay
        retries until it can); if this process dies before either, the lost-task sweeper
        (capstan.worker.maintenance) dispatches it again after task_redispatch_seconds."""
        if self._broker is not None and self._topology is not None:
            try:
                spec = task_queue_spec(self._topology, task.queue)
                if spec.name not in self._declared:
                    await self._broker.declare(spec)
                    self._declared.add(spec.name)
                await self._broker.publish(
                    [task_message(task)], self._topology.tasks_exchange, mandatory=True
                )
                return
            except Exception as exc:
                log.warning(
                    "direct dispatch failed, the outbox takes over",
                    extra={"task": task.id, "error": repr(exc)},
                )
        async with self._db.begin() as session:
            add_task_message(
                session,
                tenant_id=task.tenant_id,
                queue=task.queue,
                task_id=task.id,
                priority=task.priority,
            )
        self._on_commit()

    async def _by_key(self, tenant_id: str, key: str) -> Task | None:
        async with self._db() as session:
            return await session.scalar(
                select(Task).where(Task.tenant_id == tenant_id, Task.idempotency_key == key)
            )

    async def get(self, tenant_id: str, task_id: str) -> Task:
        async with self._db() as session:
            task = await session.scalar(
                select(Task).where(Task.tenant_id == tenant_id, Task.id == task_id)
            )
        if task is None:
            raise NotFound(f"task {task_id} does not exist")
        return task

    async def list(
        self,
        tenant_id: str,
        *,
        status: str | None,
        type: str | None,
        cursor: str | None,
        limit: int,
    ) -> tuple[list[Task], str | None]:
        stmt = select(Task).where(Task.tenant_id == tenant_id)
        if status:
            stmt = stmt.where(Task.status == status)
        if type:
            stmt = stmt.where(Task.type == type)
        if cursor:
            stmt = stmt.where(Task.id < decode_cursor(cursor))
        async with self._db() as session:
            rows = list(await session.scalars(stmt.order_by(Task.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].id) if more and rows else None

    async def cancel(self, uow: UnitOfWork, tenant_id: str, task_id: str) -> Task:
        """In the caller's transaction: a queued task is cancelled at once, a running one
        flagged (its worker stops at its next check)."""
        now = datetime.now(UTC)
        session = uow.session
        task = await session.scalar(
            select(Task).where(Task.tenant_id == tenant_id, Task.id == task_id).with_for_update()
        )
        if task is None:
            raise NotFound(f"task {task_id} does not exist")
        if task.status in FINISHED:
            raise Conflict(f"task {task_id} is already {task.status}", task_status=task.status)
        if task.status == "queued":
            task.status = "cancelled"
            task.finished_at = now
            stage_event(session, self._settings.source, task, "cancelled")
        else:
            task.cancel_requested = True
        task.updated_at = now
        await session.flush()
        uow.after_commit(self._on_commit)
        return task


async def reset_for_retry(session: AsyncSession, task_ids: list[str]) -> int:
    """Put failed tasks back in the queue with a fresh attempt budget (dead-letter requeue)."""
    now = datetime.now(UTC)
    result = await session.execute(
        update(Task)
        .where(Task.id.in_(task_ids), Task.status == "failed")
        .values(
            status="queued",
            attempts=0,
            error=None,
            finished_at=None,
            worker_id=None,
            dispatched_at=now,
            run_at=now,
            updated_at=now,
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
