"""The audit subscriber: appends every event to the audit log, the source of GET /v1/events
and of realtime resume. It runs ordered (one consumer at a time, one event at a time) so that
audit `seq` order is the order in which entries become visible: a reader that saw seq n has
seen every entry below n. After committing, it fans the event out to the realtime exchange
with its seq, for the gateway."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy.ext.asyncio import AsyncSession

from capstan.broker.port import Message
from capstan.db.schema import AuditEntry
from capstan.db.upsert import insert_ignore_returning
from capstan.events.envelope import Event, encode
from capstan.subscribers.runtime import Outcome


class AuditSubscriber:
    name: ClassVar[str] = "audit"
    patterns: ClassVar[tuple[str, ...]] = ("#",)
    ordered: ClassVar[bool] = True

    def __init__(self, realtime_exchange: str) -> None:
        self._realtime_exchange = realtime_exchange

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        seq = await insert_ignore_returning(
            session,
            AuditEntry.__table__,  # type: ignore[arg-type]
            {
                "event_id": event.id,
                "tenant_id": event.tenant_id,
                "type": event.type,
                "subject": event.subject,
                "time": event.time,
                "recorded_at": datetime.now(UTC),
                "envelope": event.envelope,
            },
            AuditEntry.__table__.c.seq,
        )
        if seq is None:
            return None
        realtime = Message(
            routing_key=event.routing_key,
            body=encode({**event.envelope, "seq": seq}),
            message_id=event.id,
            headers={"tenantid": event.tenant_id, "seq": seq},
        )
        return Outcome(publish=[(self._realtime_exchange, realtime)])
