"""Webhook registrations and their delivery records, always scoped to one tenant. Each
function works in the caller's session (the router owns the transaction) and only flushes."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.schema import Webhook, WebhookAttempt, WebhookDelivery
from capstan.errors import InvalidInput, NotFound
from capstan.ids import uuid7
from capstan.webhooks.address_guard import is_blocked, literal_ip
from capstan.webhooks.schemas import (
    AttemptRead,
    DeliveryPage,
    DeliveryRead,
    WebhookCreate,
    WebhookRead,
)

DELIVERY_CURSOR = re.compile(r"[0-9]{1,19}")
ACTIVE = "active"
DISABLED = "disabled"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def to_read(hook: Webhook) -> WebhookRead:
    return WebhookRead(
        id=hook.id,
        url=hook.url,
        patterns=list(hook.patterns),
        status=hook.status,
        disabled_reason=hook.disabled_reason,
        consecutive_failures=hook.consecutive_failures,
        created_at=hook.created_at,
    )


async def create(
    session: AsyncSession, tenant_id: str, body: WebhookCreate, *, allow_private: bool
) -> tuple[Webhook, str]:
    """A new active webhook and its secret (the only time the secret leaves the server)."""
    host = urlsplit(body.url).hostname or ""
    ip = literal_ip(host)
    if ip is not None and is_blocked(ip) and not allow_private:
        raise InvalidInput(
            f"{ip} is a private, loopback or otherwise non-public address", field="url"
        )
    secret = new_secret()
    hook = Webhook(
        id=uuid7(),
        tenant_id=tenant_id,
        url=body.url,
        patterns=list(dict.fromkeys(body.patterns)),
        secret=secret,
        status=ACTIVE,
        disabled_reason=None,
        consecutive_failures=0,
        created_at=datetime.now(UTC),
    )
    session.add(hook)
    await session.flush()
    return hook, secret


async def list_owned(session: AsyncSession, tenant_id: str) -> list[Webhook]:
    """The tenant's webhooks, oldest first."""
    rows = await session.scalars(
        select(Webhook).where(Webhook.tenant_id == tenant_id).order_by(Webhook.id)
    )
    return list(rows)


async def get(session: AsyncSession, tenant_id: str, webhook_id: str) -> Webhook:
    """The tenant's webhook; NotFound for a missing or foreign id."""
    return await _owned(session, tenant_id, webhook_id)


async def delete_owned(session: AsyncSession, tenant_id: str, webhook_id: str) -> None:
    """Remove the webhook; its deliveries and attempts go with it (FK cascade)."""
    result = await session.execute(
        delete(Webhook).where(Webhook.id == webhook_id, Webhook.tenant_id == tenant_id)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"webhook {webhook_id} not found")


async def enable(session: AsyncSession, tenant_id: str, webhook_id: str) -> Webhook:
    """Re-activate: reset the failure count and make paused pending deliveries due now."""
    now = datetime.now(UTC)
    hook = await _owned(session, tenant_id, webhook_id, lock=True)
    hook.status = ACTIVE
    hook.disabled_reason = None
    hook.consecutive_failures = 0
    await session.flush()
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.status == "pending")
        .values(next_attempt_at=now, updated_at=now)
    )
    return hook


async def deliveries(
    session: AsyncSession, tenant_id: str, webhook_id: str, *, limit: int, cursor: str | None
) -> DeliveryPage:
    """A page of the webhook's deliveries, newest first, each with its attempts in order."""
    after: int | None = None
    if cursor is not None:
        # ASCII digits only ("²".isdigit() is true), and within the BIGINT id column.
        if not DELIVERY_CURSOR.fullmatch(cursor) or int(cursor) > 2**63 - 1:
            raise InvalidInput("cursor must be a next_cursor this API returned", field="cursor")
        after = int(cursor)
    await _owned(session, tenant_id, webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if after is not None:
        query = query.where(WebhookDelivery.id < after)
    rows = list(await session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    history: dict[int, list[AttemptRead]] = {d.id: [] for d in rows}
    if rows:
        attempts = await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(history)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)
        )
        for a in attempts:
            history[a.delivery_id].append(
                AttemptRead(
                    attempt=a.attempt,
                    at=a.at,
                    status_code=a.status_code,
                    error=a.error,
                    duration_ms=a.duration_ms,
                )
            )
    items = [
        DeliveryRead(
            id=d.id,
            event_id=d.event_id,
            event_type=d.event_type,
            status=d.status,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            created_at=d.created_at,
            updated_at=d.updated_at,
            history=history[d.id],
        )
        for d in rows
    ]
    return DeliveryPage(items=items, next_cursor=str(rows[-1].id) if more else None)


async def _owned(
    session: AsyncSession, tenant_id: str, webhook_id: str, *, lock: bool = False
) -> Webhook:
    query = select(Webhook).where(Webhook.id == webhook_id, Webhook.tenant_id == tenant_id)
    if lock:
        query = query.with_for_update(key_share=True)
    hook = await session.scalar(query)
    if hook is None:
        # Another tenant's webhook is indistinguishable from a missing one.
        raise NotFound(f"webhook {webhook_id} not found")
    return hook
