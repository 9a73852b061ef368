"""Writing events to the outbox (CloudEvents 1.0 JSON envelopes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.schema import OutboxEvent
from capstan.ids import uuid7
from capstan.observability.context import current_request_id


def envelope(
    *, source: str, entity: str, action: str, tenant_id: str, subject: str, data: dict[str, Any]
) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode envelope; `tenantid` is our extension attribute."""
    env: dict[str, Any] = {
        "specversion": "1.0",
        "id": uuid7(),
        "source": source,
        "type": f"capstan.{entity}.{action}",
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "subject": subject,
        "datacontenttype": "application/json",
        "tenantid": tenant_id,
        "data": data,
    }
    request_id = current_request_id()
    if request_id:
        env["requestid"] = request_id
    return env


def add_task_message(
    session: AsyncSession, *, tenant_id: str, queue: str, task_id: str, priority: int
) -> OutboxEvent:
    """Stage the message that hands task `task_id` to a worker of `queue`."""
    row = OutboxEvent(
        event_id=uuid7(),
        tenant_id=tenant_id,
        routing_key=queue,
        subject=f"tasks/{task_id}",
        channel="tasks",
        envelope={"task_id": task_id, "priority": priority},
        created_at=datetime.now(UTC),
    )
    session.add(row)
    return row


def add_event(
    session: AsyncSession,
    *,
    source: str,
    entity: str,
    action: str,
    tenant_id: str,
    subject: str,
    data: dict[str, Any],
) -> OutboxEvent:
    """Stage an event in the caller's transaction; routing key `<entity>.<action>`."""
    env = envelope(
        source=source, entity=entity, action=action, tenant_id=tenant_id, subject=subject, data=data
    )
    row = OutboxEvent(
        event_id=env["id"],
        tenant_id=tenant_id,
        routing_key=f"{entity}.{action}",
        subject=subject,
        channel="events",
        envelope=env,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    return row
