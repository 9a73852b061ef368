"""The task lifecycle's hot statements on PostgreSQL, each ONE statement (see capstan.db.fastpath).

Each state change and the outbox event that announces it are written by one data-modifying CTE,
so they commit together without a transaction block. The portable SQLAlchemy code in
TaskService and Worker does the same on SQLite and whenever a step needs a session (effects).
Event envelopes keep the shape capstan.events.outbox.envelope() gives (tests compare both).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from capstan.db.fastpath import FastPath
from capstan.db.schema import Task
from capstan.events.outbox import OUTBOX_INSERT, envelope_head, routing_key

_TASK_COLUMNS = [c.name for c in Task.__table__.columns]

# CLAIM and FINISH find their row by primary key only: the state guards compare
# `status || ''` (and `worker_id || ''`), which no index can serve. asyncpg prepares each
# statement once per connection and PostgreSQL may keep a generic plan costed on the
# statistics of that moment: on a fresh database it chose ix_tasks_due / ix_tasks_worker with
# the guard as the index condition, so that every claim walked every queued task
# (tests/tasks/test_statement_plans.py).


# $1 task id, $2 worker id, $3 now, $4 event id, $5 envelope head (no tenant/subject/data).
CLAIM = f"""
WITH claimed AS (
  UPDATE tasks SET status = 'running', attempts = attempts + 1, worker_id = $2,
         started_at = $3, updated_at = $3, progress = 0, progress_message = NULL
   WHERE id = $1 AND status || '' = 'queued' AND run_at <= $3
  RETURNING *
), announced AS (
  {OUTBOX_INSERT}
  SELECT $4, c.tenant_id, 'task.started', 'tasks/' || c.id, 'events',
         $5::jsonb
         || jsonb_strip_nulls(jsonb_build_object(
              'subject', 'tasks/' || c.id, 'tenantid', c.tenant_id, 'requestid', c.request_id))
         || jsonb_build_object('data', jsonb_build_object(
              'id', c.id, 'type', c.type, 'status', c.status, 'attempts', c.attempts,
              'max_attempts', c.max_attempts, 'worker', $2::text)),
         $3
    FROM claimed c
)
SELECT * FROM claimed
"""

# $1 id, $2 worker, $3 attempt, $4 status, $5 error, $6 result, $7 finished_at, $8 run_at,
# $9 now, $10 event id, $11 tenant, $12 routing key, $13 envelope.
FINISH = f"""
WITH finished AS (
  UPDATE tasks SET
         status = $4::text,
         error = $5::text,
         result = CASE WHEN $4::text = 'succeeded' THEN $6::jsonb ELSE result END,
         finished_at = COALESCE($7::timestamptz, finished_at),
         run_at = COALESCE($8::timestamptz, run_at),
         dispatched_at = CASE WHEN $4::text = 'queued' THEN NULL ELSE dispatched_at END,
         worker_id = CASE WHEN $4::text = 'queued' THEN NULL ELSE worker_id END,
         progress = CASE WHEN $4::text = 'succeeded' THEN 1.0 ELSE progress END,
         updated_at = $9
   WHERE id = $1 AND status || '' = 'running' AND worker_id || '' = $2 AND attempts = $3
  RETURNING id
), announced AS (
  {OUTBOX_INSERT}
  SELECT $10, $11, $12, 'tasks/' || f.id, 'events', $13::jsonb, $9 FROM finished f
)
SELECT id FROM finished
"""


_INSERT_COLUMNS = [c for c in _TASK_COLUMNS]
_N = len(_INSERT_COLUMNS)

# The task row and its `task.queued` event; nothing when the idempotency key is taken.
# $1..$N the task's columns, then event id, envelope, now.
SUBMIT = f"""
WITH created AS (
  INSERT INTO tasks ({", ".join(_INSERT_COLUMNS)})
  VALUES ({", ".join(f"${i + 1}" for i in range(_N))})
  ON CONFLICT DO NOTHING
  RETURNING id, tenant_id
), announced AS (
  {OUTBOX_INSERT}
  SELECT ${_N + 1}, c.tenant_id, 'task.queued', 'tasks/' || c.id, 'events', ${_N + 2}::jsonb,
         ${_N + 3}
    FROM created c
)
SELECT id FROM created
"""


def submit_args(task: Task, event: dict[str, Any]) -> list[Any]:
    """The SUBMIT statement's arguments for a new (transient) task and its event."""
    return [
        *(getattr(task, name) for name in _INSERT_COLUMNS),
        event["id"],
        event,
        task.created_at,
    ]


def task_from_row(row: Any) -> Task:
    """A detached Task built from a RETURNING * row (no session, no identity map)."""
    return Task(**{name: row[name] for name in _TASK_COLUMNS})


async def claim(fast: FastPath, task_id: str, worker_id: str, now: datetime, source: str) -> Any:
    """Claim a queued, due task and stage its `task.started` event; the row or None."""
    head = envelope_head(source=source, entity="task", action="started", request_id=None)
    return await fast.fetchrow(CLAIM, task_id, worker_id, now, head["id"], head)


async def finish(
    fast: FastPath,
    task: Task,
    worker_id: str,
    *,
    status: str,
    error: str | None,
    result: Any,
    finished_at: datetime | None,
    run_at: datetime | None,
    now: datetime,
    event: dict[str, Any],
) -> bool:
    """Record one attempt's outcome and its event if this worker still owns the attempt."""
    row = await fast.fetchrow(
        FINISH,
        task.id,
        worker_id,
        task.attempts,
        status,
        error,
        result,
        finished_at,
        run_at,
        now,
        event["id"],
        task.tenant_id,
        routing_key(event),
        event,
    )
    return row is not None


# Tasks staged by a subscriber (capstan.tasks.staging.stage_many), all in ONE statement: the
# rows, their `task.queued` events and their dispatch messages; nothing for a task whose
# idempotency key is taken (a redelivered event), so no processed_events row is needed.
# $1 ids, $2 tenant ids, $3 inputs, $4 idempotency keys, $5 event ids, $6 event envelopes,
# $7 message ids, then $8 type, $9 queue, $10 max attempts, $11 time limit, $12 now.
STAGE_MANY = f"""
WITH wanted AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::text[],
                       $6::jsonb[], $7::text[])
         AS w(id, tenant_id, input, idempotency_key, event_id, envelope, message_id)
), created AS (
  INSERT INTO tasks (id, tenant_id, type, queue, priority, status, input, attempts,
                     max_attempts, time_limit_seconds, idempotency_key, progress,
                     cancel_requested, run_at, dispatched_at, created_at, updated_at)
  SELECT w.id, w.tenant_id, $8::text, $9::text, 0, 'queued', w.input, 0, $10::int,
         $11::float8, w.idempotency_key, 0, false, $12::timestamptz, $12::timestamptz,
         $12::timestamptz, $12::timestamptz
    FROM wanted w
  ON CONFLICT DO NOTHING
  RETURNING id
), announced AS (
  {OUTBOX_INSERT}
  SELECT w.event_id, w.tenant_id, 'task.queued', 'tasks/' || w.id, 'events', w.envelope,
         $12::timestamptz
    FROM created c JOIN wanted w USING (id)
  UNION ALL
  SELECT w.message_id, w.tenant_id, $9::text, 'tasks/' || w.id, 'tasks',
         jsonb_build_object('task_id', w.id, 'priority', 0), $12::timestamptz
    FROM created c JOIN wanted w USING (id)
)
SELECT count(*) AS created FROM created
"""
