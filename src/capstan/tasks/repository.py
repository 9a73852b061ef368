"""SQL reads about workers and their tasks. Functions take the caller's session."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.schema import Task, WorkerRecord


async def workers(session: AsyncSession) -> list[WorkerRecord]:
    """Every worker that has recorded a heartbeat (records an hour stale are reaped)."""
    return list(await session.scalars(select(WorkerRecord).order_by(WorkerRecord.id)))


async def running(session: AsyncSession) -> list[Task]:
    """The tasks of every tenant that a worker is running now."""
    return list(await session.scalars(select(Task).where(Task.status == "running")))
