"""Retention prunes every growing table by age, in both modes, and only what is past it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from capstan.composition import build_scheduler
from capstan.db.schema import (
    AuditEntry,
    ProcessedEvent,
    Task,
    TaskEffect,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)
from capstan.scheduler.retention import prune
from tests.conftest import Api

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)  # past every default retention
RECENT = NOW - timedelta(hours=1)


def task(tenant_id: str, status: str, finished_at: datetime | None) -> Task:
    at = finished_at or RECENT
    return Task(
        id=str(uuid.uuid4()), tenant_id=tenant_id, type="text.language", queue="default",
        priority=0, status=status, input={}, result=None, error=None, attempts=1,
        max_attempts=3, time_limit_seconds=60.0, idempotency_key=None, progress=1.0,
        progress_message=None, cancel_requested=False, worker_id=None, request_id=None,
        run_at=at, dispatched_at=at, created_at=at, started_at=at, finished_at=finished_at,
        updated_at=at,
    )  # fmt: skip


def delivery(hook: Webhook, status: str, at: datetime) -> WebhookDelivery:
    return WebhookDelivery(
        webhook_id=hook.id, tenant_id=hook.tenant_id, event_id=str(uuid.uuid4()),
        event_type="capstan.document.created", envelope={}, status=status, attempts=1,
        next_attempt_at=None, created_at=at, updated_at=at,
    )  # fmt: skip


def audit(tenant_id: str, at: datetime) -> AuditEntry:
    return AuditEntry(
        event_id=str(uuid.uuid4()), tenant_id=tenant_id, type="capstan.document.created",
        subject="documents/x", time=at, recorded_at=at, envelope={},
    )  # fmt: skip


async def test_retention_deletes_only_rows_past_their_age(api: Api) -> None:
    tenant = await api.tenant()
    subscriber = f"retention-test-{uuid.uuid4().hex[:8]}"
    hook = Webhook(
        id=str(uuid.uuid4()), tenant_id=tenant.id, url="https://example.com/h", patterns=["#"],
        secret="whsec_x", status="active", disabled_reason=None, consecutive_failures=0,
        created_at=OLD,
    )  # fmt: skip
    old_task, kept = (
        task(tenant.id, "succeeded", OLD),
        [
            task(tenant.id, "succeeded", RECENT),
            task(tenant.id, "queued", None),  # unfinished: never pruned, however old
        ],
    )
    old_delivery = delivery(hook, "succeeded", OLD)
    async with api.container.db.begin() as session:
        session.add_all([hook, old_task, *kept, audit(tenant.id, OLD), audit(tenant.id, RECENT)])
        session.add_all([old_delivery, delivery(hook, "pending", OLD)])
        session.add_all(
            ProcessedEvent(subscriber=subscriber, event_id=str(uuid.uuid4()), processed_at=at)
            for at in (OLD, OLD, RECENT)
        )
        await session.flush()
        session.add(TaskEffect(task_id=old_task.id, name="e", value=1, created_at=OLD))
        session.add(
            WebhookAttempt(
                delivery_id=old_delivery.id, attempt=1, at=OLD, status_code=200, error=None,
                duration_ms=1.0,
            )
        )  # fmt: skip
    api.container.settings.retention_batch_size = 1  # several batches per table

    deleted = await prune(api.container.db, api.container.settings, api.container.metrics, now=NOW)

    async with api.container.db() as session:

        async def count(column: object, *where: object) -> int:
            return int(await session.scalar(select(func.count(column)).where(*where)) or 0)

        tasks = set(await session.scalars(select(Task.id).where(Task.tenant_id == tenant.id)))
        assert tasks == {t.id for t in kept}
        assert await count(TaskEffect.task_id, TaskEffect.task_id == old_task.id) == 0
        assert await count(AuditEntry.seq, AuditEntry.tenant_id == tenant.id) == 1
        assert await count(ProcessedEvent.event_id, ProcessedEvent.subscriber == subscriber) == 1
        statuses = list(
            await session.scalars(
                select(WebhookDelivery.status).where(WebhookDelivery.webhook_id == hook.id)
            )
        )
        assert statuses == ["pending"]
        assert await count(WebhookAttempt.id, WebhookAttempt.delivery_id == old_delivery.id) == 0
    assert deleted["tasks"] >= 1 and deleted["processed_events"] >= 2
    registry = api.container.metrics.registry
    sample = registry.get_sample_value("capstan_retention_deleted_total", {"table": "tasks"})
    assert sample == deleted["tasks"]
    assert registry.get_sample_value("capstan_retention_last_run_timestamp_seconds") == (
        NOW.timestamp()
    )


async def test_zero_days_keeps_rows_and_the_scheduler_runs_retention(api: Api) -> None:
    tenant = await api.tenant()
    async with api.container.db.begin() as session:
        session.add(audit(tenant.id, OLD))
    api.container.settings.audit_retention_days = 0
    deleted = await prune(api.container.db, api.container.settings, api.container.metrics, now=NOW)
    assert "audit_log" not in deleted
    async with api.container.db() as session:
        left = await session.scalar(
            select(func.count(AuditEntry.seq)).where(AuditEntry.tenant_id == tenant.id)
        )
    assert left == 1
    scheduler = build_scheduler(api.container)
    assert {job.name: job.schedule for job in scheduler.jobs}["retention"] == "30 3 * * *"
