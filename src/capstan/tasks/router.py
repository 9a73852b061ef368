"""/v1/tasks, /v1/task-types and /v1/workers: thin handlers over TaskService."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from capstan.api.deps import ContainerDep, PrincipalDep
from capstan.auth.admin import ADMIN_ONLY, AdminDep
from capstan.db.unit import unit_of_work
from capstan.errors import Conflict, Forbidden
from capstan.tasks import repository
from capstan.tasks.idempotency import differences
from capstan.tasks.registry import check_submit
from capstan.tasks.schemas import (
    TaskPage,
    TaskRead,
    TaskStatus,
    TaskSubmit,
    TaskTypeRead,
    WorkerRead,
    WorkerTask,
)
from capstan.tasks.service import to_read

router = APIRouter(tags=["tasks"])


@router.post("/v1/tasks", status_code=status.HTTP_202_ACCEPTED)
async def submit_task(
    body: TaskSubmit, c: ContainerDep, who: PrincipalDep, response: Response
) -> TaskRead:
    """Queue a task; answers at once. The same idempotency key returns the same task."""
    if c.task_registry.get(body.type).admin_only and not who.admin:
        raise Forbidden(f"task type {body.type!r} {ADMIN_ONLY}")
    await check_submit(c.task_registry, who.tenant_id, body)
    task, created = await c.tasks.submit(who.tenant_id, body)
    if not created:
        if differing := differences(task, body):
            raise Conflict(
                f"idempotency key {body.idempotency_key!r} was used for task {task.id} with a "
                f"different {', '.join(differing)}; use a new key for a different request",
                task_id=task.id,
                fields=differing,
            )
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/tasks/{task.id}"
    return to_read(task)


@router.get("/v1/tasks/{task_id}")
async def get_task(task_id: str, c: ContainerDep, who: PrincipalDep) -> TaskRead:
    """A task's state, attempts, progress, result or last error."""
    return to_read(await c.tasks.get(who.tenant_id, task_id))


@router.get("/v1/tasks")
async def list_tasks(
    c: ContainerDep,
    who: PrincipalDep,
    status: TaskStatus | None = None,
    type: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TaskPage:
    """Tasks, newest first."""
    rows, next_cursor = await c.tasks.list(
        who.tenant_id, status=status, type=type, cursor=cursor, limit=limit
    )
    return TaskPage(items=[to_read(t) for t in rows], next_cursor=next_cursor)


@router.post("/v1/tasks/{task_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
async def cancel_task(task_id: str, c: ContainerDep, who: PrincipalDep) -> TaskRead:
    """Cancel: a queued task at once, a running one at its next cancellation point."""
    async with unit_of_work(c.db) as uow:
        task = await c.tasks.cancel(uow, who.tenant_id, task_id)
    return to_read(task)


@router.get("/v1/task-types")
async def task_types(c: ContainerDep, who: PrincipalDep) -> list[TaskTypeRead]:
    """Every task type with the JSON schema of its input."""
    return [
        TaskTypeRead(
            name=t.name,
            description=t.description,
            queue=t.queue,
            input_schema=t.input_model.model_json_schema(),
            admin_only=t.admin_only,
        )
        for t in c.task_registry
    ]


@router.get("/v1/workers")
async def workers(c: ContainerDep, _: AdminDep) -> list[WorkerRead]:
    """Workers (host names, pids) with their last heartbeat and the tasks they are running,
    of every tenant: operator information, for admin API keys only."""
    now = datetime.now(UTC)
    ttl = timedelta(seconds=c.settings.worker_heartbeat_ttl_seconds)
    async with c.db() as session:
        records = await repository.workers(session)
        running = await repository.running(session)
    by_worker: dict[str, list[WorkerTask]] = {}
    for task in running:
        elapsed = (now - task.started_at).total_seconds() if task.started_at else 0.0
        by_worker.setdefault(task.worker_id or "", []).append(
            WorkerTask(
                id=task.id,
                type=task.type,
                running_for_seconds=round(elapsed, 3),
                time_limit_seconds=task.time_limit_seconds,
                progress=task.progress,
                stuck=elapsed > task.time_limit_seconds,
            )
        )
    return [
        WorkerRead(
            id=w.id,
            hostname=w.hostname,
            pid=w.pid,
            queues=w.queues,
            concurrency=w.concurrency,
            status="alive" if now - w.last_heartbeat_at <= ttl else "stale",
            loop_lag_seconds=w.loop_lag_seconds,
            started_at=w.started_at,
            last_heartbeat_at=w.last_heartbeat_at,
            running=by_worker.get(w.id, []),
        )
        for w in records
    ]
