"""Submitting a task inside someone else's transaction (a subscriber's): the task row, its
`task.queued` event and its dispatch message commit with the caller's change or not at all.

`TaskService.submit` opens its own transaction and may dispatch directly; a subscriber cannot
(on SQLite its transaction already holds the write lock). The relay delivers the dispatch
message from the outbox, as it does for any task whose direct dispatch failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.fastpath import FastPath
from capstan.db.schema import Task
from capstan.events.outbox import add_envelope
from capstan.ids import uuid7
from capstan.settings import Settings
from capstan.tasks import statements
from capstan.tasks.registry import TaskRegistry, TaskType
from capstan.tasks.service import dispatch, new_task, task_event


@dataclass(frozen=True, slots=True)
class Staged:
    """One task a subscriber stages: for this tenant, with this input, once per key."""

    tenant_id: str
    input: dict[str, Any]
    idempotency_key: str


def _new_task(task_type: TaskType, settings: Settings, staged: Staged, now: datetime) -> Task:
    """The queued, due task both staging paths write (its input validated by the caller)."""
    return new_task(
        task_type,
        settings,
        tenant_id=staged.tenant_id,
        input=staged.input,
        idempotency_key=staged.idempotency_key,
        now=now,
    )


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
    task = _new_task(task_type, settings, Staged(tenant_id, input, idempotency_key), now)
    session.add(task)
    add_envelope(session, task_event(settings.source, task, "queued"))
    dispatch(session, task, now)
    return task


async def stage_many(
    fast: FastPath, registry: TaskRegistry, settings: Settings, type: str, wanted: list[Staged]
) -> int:
    """Stage tasks of one `type` on PostgreSQL in ONE statement, committed by itself (a
    subscriber's batch, issue 11): each row with its `task.queued` event and its dispatch
    message, as `stage_task` writes them; a taken idempotency key stages nothing. Returns how
    many were created."""
    task_type = registry.get(type)
    now = datetime.now(UTC)
    # One row per (tenant, key) even within one batch: keys are unique per tenant only.
    unique = {(w.tenant_id, w.idempotency_key): w for w in wanted}
    if not unique:
        return 0
    for w in unique.values():
        task_type.input_model.model_validate(w.input)
    tasks = [_new_task(task_type, settings, w, now) for w in unique.values()]
    events = [task_event(settings.source, task, "queued") for task in tasks]
    row = await fast.fetchrow(
        statements.STAGE_MANY,
        [t.id for t in tasks],
        [t.tenant_id for t in tasks],
        [t.input for t in tasks],
        [t.idempotency_key for t in tasks],
        [e["id"] for e in events],
        events,
        [uuid7() for _ in tasks],
        task_type.name,
        task_type.queue,
        tasks[0].max_attempts,  # the type's, as every row's
        tasks[0].time_limit_seconds,
        now,
    )
    return int(row["created"])
