"""Submitting a task inside someone else's transaction (a subscriber's): the task row, its
`task.queued` event and its dispatch message commit with the caller's change or not at all.

`TaskService.submit` opens its own transaction and may dispatch directly; a subscriber cannot
(on SQLite its transaction already holds the write lock). The relay delivers the dispatch
message from the outbox, as it does for any task whose direct dispatch failed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.schema import Task
from capstan.events.outbox import add_envelope
from capstan.ids import uuid7
from capstan.settings import Settings
from capstan.tasks.registry import TaskRegistry
from capstan.tasks.service import dispatch, task_event


async def stage_task(
    session: AsyncSession,
    registry: TaskRegistry,
    settings: Settings,
    *,
    tenant_id: str,
    type: str,
    input: dict[str, Any],
    idempotency_key: str,
) -> Task | None:
    """Add the task to `session`, or None when one with this key exists (a replayed event)."""
    task_type = registry.get(type)
    task_type.input_model.model_validate(input)
    found = await session.scalar(
        select(Task.id).where(Task.tenant_id == tenant_id, Task.idempotency_key == idempotency_key)
    )
    if found is not None:
        return None
    now = datetime.now(UTC)
    task = Task(
        id=uuid7(),
        tenant_id=tenant_id,
        type=task_type.name,
        queue=task_type.queue,
        priority=0,
        status="queued",
        input=input,
        attempts=0,
        max_attempts=task_type.max_attempts or settings.task_default_max_attempts,
        time_limit_seconds=task_type.time_limit_seconds or settings.task_default_time_limit_seconds,
        idempotency_key=idempotency_key,
        progress=0.0,
        cancel_requested=False,
        request_id=None,
        run_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(task)
    add_envelope(session, task_event(settings.source, task, "queued"))
    dispatch(session, task, now)
    return task
