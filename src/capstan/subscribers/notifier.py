"""The notifier subscriber: turns each event into one delivery per matching active webhook of
the event's tenant. It only records deliveries (in the runtime's transaction, so they commit
with the idempotency record); the webhook dispatcher sends them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.broker.port import topic_matches
from capstan.db.schema import Webhook, WebhookDelivery
from capstan.db.upsert import insert_ignore
from capstan.events.envelope import Event
from capstan.subscribers.runtime import Outcome


class NotifierSubscriber:
    name: ClassVar[str] = "notifier"
    patterns: ClassVar[tuple[str, ...]] = ("#",)
    ordered: ClassVar[bool] = False

    def __init__(self, wake: Callable[[], None] | None = None) -> None:
        # Nudges the dispatcher once the deliveries are committed (it polls anyway).
        self._wake = wake

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
            wake = self._wake

            def after_commit(_session: Any) -> None:
                wake()

            sa_event.listen(session.sync_session, "after_commit", after_commit, once=True)
        return None
