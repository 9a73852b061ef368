"""The audit subscriber: appends every event to the audit log, the source of GET /v1/events
and of realtime resume. It runs ordered (one consumer at a time, one batch at a time) so that
audit `seq` order is the order in which entries become visible: a reader that saw seq n has
seen every entry below n. After committing, it fans the batch out to the realtime exchange
with each event's seq, for the gateway: one message per batch (capstan.events.realtime).

On PostgreSQL a batch is ONE statement (capstan.db.fastpath): the unique event_id makes it
idempotent by itself, so no processed_events row is needed; SQLite takes the runtime's path."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.fastpath import FastPath
from capstan.db.schema import AuditEntry
from capstan.db.upsert import insert_ignore_returning
from capstan.events.envelope import Event, encode
from capstan.events.realtime import batch_message
from capstan.subscribers.runtime import ApplyBatch, Outcome

# Rows are inserted in the batch's order (ORDER BY the ordinality), so seq follows queue order.
# The envelopes arrive as the JSON text received (PostgreSQL parses it once, into jsonb): no
# encoding of the decoded envelope again on this side.
AUDIT_BATCH = """
INSERT INTO audit_log (event_id, tenant_id, type, subject, time, recorded_at, envelope)
SELECT b.event_id, b.tenant_id, b.type, b.subject, b.time, $6, b.envelope::jsonb
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $7::text[])
       WITH ORDINALITY AS b(event_id, tenant_id, type, subject, time, envelope, n)
 ORDER BY b.n
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id, seq
"""


class AuditSubscriber:
    name: ClassVar[str] = "audit"
    patterns: ClassVar[tuple[str, ...]] = ("#",)
    ordered: ClassVar[bool] = True

    def __init__(self, realtime_exchange: str, fast: FastPath | None = None) -> None:
        self._realtime_exchange = realtime_exchange
        self._fast = fast
        self.apply_batch: ApplyBatch | None = self._apply_fast if fast is not None else None

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
        return None if seq is None else self._fan_out([(event, seq)])

    async def _apply_fast(self, events: list[Event]) -> list[tuple[Outcome | None, bool]]:
        assert self._fast is not None
        rows = await self._fast.fetch(
            AUDIT_BATCH,
            [e.id for e in events],
            [e.tenant_id for e in events],
            [e.type for e in events],
            [e.subject for e in events],
            [e.time for e in events],
            datetime.now(UTC),
            [e.body.decode() if e.body else encode(e.envelope).decode() for e in events],
        )
        seqs = {row["event_id"]: row["seq"] for row in rows}
        applied: list[tuple[Outcome | None, bool]] = []
        audited: list[tuple[Event, int]] = []
        for event in events:
            # pop: a duplicate within the batch was inserted (and is fanned out) once.
            seq = seqs.pop(event.id, None)
            applied.append((None, seq is not None))
            if seq is not None:
                audited.append((event, seq))
        if audited:
            # The whole batch's fan-out rides on its last event: one message, published once
            # the batch is committed, in seq order.
            applied[-1] = (self._fan_out(audited), applied[-1][1])
        return applied

    def _fan_out(self, audited: list[tuple[Event, int]]) -> Outcome:
        return Outcome(publish=[(self._realtime_exchange, batch_message(audited))])
