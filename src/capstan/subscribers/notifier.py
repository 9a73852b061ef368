"""The notifier subscriber: turns each event into one delivery per matching active webhook of
the event's tenant. It only records deliveries (in the runtime's transaction, so they commit
with the idempotency record); the webhook dispatcher sends them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.broker.port import topic_matches
from capstan.db.fastpath import FastPath
from capstan.db.schema import Webhook, WebhookDelivery
from capstan.db.unit import call_after_commit
from capstan.db.upsert import insert_ignore
from capstan.events.envelope import Event
from capstan.subscribers.runtime import ApplyBatch, Outcome

# The active webhooks of every tenant in a batch: one query per batch, not one per event, and
# nothing written for tenants without a matching webhook (most events of most tenants).
ACTIVE_HOOKS = """
SELECT id, tenant_id, patterns FROM webhooks
 WHERE tenant_id = ANY($1::text[]) AND status = 'active'
"""

# Unique (webhook_id, event_id): a redelivered event adds nothing, so no processed_events row.
ADD_DELIVERIES = """
INSERT INTO webhook_deliveries (webhook_id, tenant_id, event_id, event_type, envelope, status,
                                attempts, next_attempt_at, created_at, updated_at)
SELECT d.webhook_id, d.tenant_id, d.event_id, d.event_type, d.envelope, 'pending', 0, $6, $6, $6
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
       AS d(webhook_id, tenant_id, event_id, event_type, envelope)
ON CONFLICT (webhook_id, event_id) DO NOTHING
"""


class NotifierSubscriber:
    name: ClassVar[str] = "notifier"
    patterns: ClassVar[tuple[str, ...]] = ("#",)
    ordered: ClassVar[bool] = False
    batched: ClassVar[bool] = True

    def __init__(
        self, wake: Callable[[], None] | None = None, fast: FastPath | None = None
    ) -> None:
        # Nudges the dispatcher once the deliveries are committed (it polls anyway).
        self._wake = wake
        self._fast = fast
        self.apply_batch: ApplyBatch | None = self._apply_fast if fast is not None else None

    async def _apply_fast(self, events: list[Event]) -> list[tuple[Outcome | None, bool]]:
        assert self._fast is not None
        hooks = await self._fast.fetch(ACTIVE_HOOKS, sorted({e.tenant_id for e in events}))
        owed = [
            (hook["id"], event)
            for event in events
            for hook in hooks
            if hook["tenant_id"] == event.tenant_id
            and any(topic_matches(p, event.routing_key) for p in hook["patterns"])
        ]
        if owed:
            status = await self._fast.execute(
                ADD_DELIVERIES,
                [webhook_id for webhook_id, _ in owed],
                [event.tenant_id for _, event in owed],
                [event.id for _, event in owed],
                [event.type for _, event in owed],
                [event.envelope for _, event in owed],
                datetime.now(UTC),
            )
            if status != "INSERT 0 0" and self._wake is not None:
                self._wake()
        # Duplicates are absorbed by the unique key; they are not told apart here.
        return [(None, True)] * len(events)

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        hooks = await session.execute(
            select(Webhook.id, Webhook.patterns).where(
                Webhook.tenant_id == event.tenant_id, Webhook.status == "active"
            )
        )
        now = datetime.now(UTC)
        created = 0
        for webhook_id, patterns in hooks.all():
            if not any(topic_matches(p, event.routing_key) for p in patterns):
                continue
            # Unique (webhook_id, event_id): a redelivered event adds nothing.
            created += await insert_ignore(
                session,
                WebhookDelivery.__table__,  # type: ignore[arg-type]
                {
                    "webhook_id": webhook_id,
                    "tenant_id": event.tenant_id,
                    "event_id": event.id,
                    "event_type": event.type,
                    "envelope": event.envelope,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        if created and self._wake is not None:
            call_after_commit(session, self._wake)
        return None
