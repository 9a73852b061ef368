"""Writing events to the outbox (CloudEvents 1.0 JSON envelopes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.schema import OutboxEvent
from capstan.ids import uuid7
from capstan.observability.context import current_request_id

_UNSET: Any = object()


# The outbox row's columns, as the hot single statements (capstan.tasks.statements,
# capstan.documents.statements) insert them next to the row change they announce.
OUTBOX_INSERT = (
    "INSERT INTO outbox (event_id, tenant_id, routing_key, subject, channel, envelope, created_at)"
)


def envelope_head(
    *, source: str, entity: str, action: str, request_id: str | None = _UNSET
) -> dict[str, Any]:
    """The CloudEvents attributes known before the row: everything but subject, tenant, data.

    `request_id` defaults to the current request's; the hot statements (capstan.tasks.statements)
    add the rest in SQL from the row they change."""
    head: dict[str, Any] = {
        "specversion": "1.0",
        "id": uuid7(),
        "source": source,
        "type": f"capstan.{entity}.{action}",
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
    }
    if request_id is _UNSET:
        request_id = current_request_id()
    if request_id:
        head["requestid"] = request_id
    return head


def envelope(
    *,
    source: str,
    entity: str,
    action: str,
    tenant_id: str,
    subject: str,
    data: dict[str, Any],
    request_id: str | None = _UNSET,
) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode envelope; `tenantid` is our extension attribute."""
    env = envelope_head(source=source, entity=entity, action=action, request_id=request_id)
    env["subject"] = subject
    env["tenantid"] = tenant_id
    env["data"] = data
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
    request_id: str | None = _UNSET,
) -> OutboxEvent:
    """Stage an event in the caller's transaction; routing key `<entity>.<action>`."""
    env = envelope(
        source=source,
        entity=entity,
        action=action,
        tenant_id=tenant_id,
        subject=subject,
        data=data,
        request_id=request_id,
    )
    return add_envelope(session, env)


def add_envelope(session: AsyncSession, env: dict[str, Any]) -> OutboxEvent:
    """Stage a built envelope; its routing key is its type without the `capstan.` prefix."""
    row = OutboxEvent(
        event_id=env["id"],
        tenant_id=env["tenantid"],
        routing_key=routing_key(env),
        subject=env["subject"],
        channel="events",
        envelope=env,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    return row


def routing_key(env: dict[str, Any]) -> str:
    """`<entity>.<action>` of an envelope whose type is `capstan.<entity>.<action>`."""
    type_: str = env["type"]
    return type_.removeprefix("capstan.")
