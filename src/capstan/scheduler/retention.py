"""Retention: the tables that grow with traffic are pruned by age, in batches.

processed_events (a row per event per subscriber), audit_log, finished webhook deliveries
(their attempts go with them) and finished tasks (with their effects). Each batch is its own
short transaction, so pruning a large backlog never holds a long lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.db.schema import AuditEntry, ProcessedEvent, Task, TaskEffect, WebhookDelivery
from capstan.scheduler.core import utc_now

if TYPE_CHECKING:
    from capstan.observability.metrics import Metrics
    from capstan.settings import Settings

log = logging.getLogger(__name__)

FINISHED_TASKS = ("succeeded", "failed", "cancelled")
FINISHED_DELIVERIES = ("succeeded", "failed")


def _cutoff(now: datetime, days: float) -> datetime | None:
    return None if days <= 0 else now - timedelta(days=days)


async def _in_batches(
    db: async_sessionmaker[AsyncSession],
    size: int,
    pick: Any,
    remove: Callable[[AsyncSession, list[Any]], Any],
) -> int:
    """Delete what `pick` (a SELECT of keys, oldest first) finds, a batch at a time."""
    total = 0
    while True:
        async with db.begin() as session:
            keys = list(await session.execute(pick.limit(size)))
            if not keys:
                return total
            await remove(session, keys)
        total += len(keys)
        if len(keys) < size:
            return total


async def prune(
    db: async_sessionmaker[AsyncSession],
    s: Settings,
    metrics: Metrics,
    *,
    now: datetime | None = None,
) -> dict[str, int]:
    """Delete rows past their retention; how many per table."""
    now = now or utc_now()
    deleted: dict[str, int] = {}

    if cutoff := _cutoff(now, s.processed_events_retention_days):
        deleted["processed_events"] = await _in_batches(
            db,
            s.retention_batch_size,
            select(ProcessedEvent.subscriber, ProcessedEvent.event_id)
            .where(ProcessedEvent.processed_at < cutoff)
            .order_by(ProcessedEvent.processed_at),
            lambda session, keys: session.execute(
                delete(ProcessedEvent).where(
                    tuple_(ProcessedEvent.subscriber, ProcessedEvent.event_id).in_(
                        [tuple(k) for k in keys]
                    )
                )
            ),
        )
    if cutoff := _cutoff(now, s.audit_retention_days):
        deleted["audit_log"] = await _in_batches(
            db,
            s.retention_batch_size,
            select(AuditEntry.seq).where(AuditEntry.recorded_at < cutoff).order_by(AuditEntry.seq),
            lambda session, keys: session.execute(
                delete(AuditEntry).where(AuditEntry.seq.in_([k[0] for k in keys]))
            ),
        )
    if cutoff := _cutoff(now, s.webhook_delivery_retention_days):
        # Attempts go with their delivery (ON DELETE CASCADE).
        deleted["webhook_deliveries"] = await _in_batches(
            db,
            s.retention_batch_size,
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status.in_(FINISHED_DELIVERIES),
                WebhookDelivery.updated_at < cutoff,
            )
            .order_by(WebhookDelivery.id),
            lambda session, keys: session.execute(
                delete(WebhookDelivery).where(WebhookDelivery.id.in_([k[0] for k in keys]))
            ),
        )
    if cutoff := _cutoff(now, s.task_retention_days):

        async def remove_tasks(session: AsyncSession, keys: list[Any]) -> None:
            ids = [k[0] for k in keys]
            await session.execute(delete(TaskEffect).where(TaskEffect.task_id.in_(ids)))
            await session.execute(delete(Task).where(Task.id.in_(ids)))

        deleted["tasks"] = await _in_batches(
            db,
            s.retention_batch_size,
            select(Task.id)
            .where(Task.status.in_(FINISHED_TASKS), Task.finished_at < cutoff)
            .order_by(Task.id),
            remove_tasks,
        )
    for table, count in deleted.items():
        metrics.retention_deleted.labels(table).inc(count)
    metrics.retention_last_run.set(now.timestamp())
    log.info("retention done", extra={"deleted": deleted})
    return deleted


class RetentionJob:
    """The scheduler job: prune at each slot of CAPSTAN_RETENTION_SCHEDULE."""

    def __init__(
        self, db: async_sessionmaker[AsyncSession], settings: Settings, metrics: Metrics
    ) -> None:
        self._db = db
        self._settings = settings
        self._metrics = metrics

    async def __call__(self, slot: datetime) -> None:
        await prune(self._db, self._settings, self._metrics)
