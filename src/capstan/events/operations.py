"""Recovery operations on the event flow: replay and dead-letter handling (CLI-driven)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.broker.port import Broker, Message, QueueSpec
from capstan.db.schema import AuditEntry, OutboxEvent, ProcessedEvent
from capstan.events.envelope import encode
from capstan.events.topology import Topology

BATCH = 500


@dataclass(frozen=True)
class EventFlow:
    """What the recovery operations use (built by capstan.composition.event_flow)."""

    db: async_sessionmaker[AsyncSession]
    broker: Broker
    topology: Topology
    queues: dict[str, QueueSpec]  # every known subscriber's queue, by subscriber name
    enabled: list[str]  # the subscribers `all` stands for

    def names(self, requested: list[str]) -> list[str]:
        """Expand `all` (or nothing) to the enabled subscribers; reject unknown names."""
        names = self.enabled if requested in ([], ["all"]) else requested
        unknown = sorted(set(names) - set(self.queues))
        if unknown:
            raise ValueError(
                f"unknown subscriber(s): {', '.join(unknown)}; known: {', '.join(self.queues)}"
            )
        return list(names)


async def replay(
    c: EventFlow,
    since: datetime,
    *,
    subscriber: str | None = None,
    source: Literal["audit", "outbox"] = "audit",
    tenant_id: str | None = None,
    progress: Callable[[int], None] = lambda _n: None,
) -> int:
    """Publish again every event since `since`; returns how many.

    Without `subscriber`, events go to the exchange: every subscriber receives them and those
    that already had their effect skip them (idempotency), so this repairs what was missed.
    With `subscriber`, that one forgets it saw the events and applies them again.
    """
    spec = None
    if subscriber is not None:
        [name] = c.names([subscriber])
        spec = c.queues[name]
    sent = 0
    position = 0
    while True:
        batch = await _load(c, since, source, position, tenant_id)
        if not batch:
            return sent
        position = batch[-1][0]
        messages = [
            Message(
                env["type"].removeprefix("capstan."),
                encode(env),
                env["id"],
                {"tenantid": env.get("tenantid", "")},
            )
            for _, env in batch
        ]
        if spec is None:
            # To whichever subscribers take each event: one that none of the enabled
            # subscribers takes is not needed, not an error (publish refuses unroutable
            # mandatory messages, on RabbitMQ as in memory).
            await c.broker.publish(messages, c.topology.events_exchange, mandatory=False)
        else:
            # Only what that subscriber takes (its queue is not bound to the others).
            messages = [m for m in messages if spec.takes(m.routing_key)]
            if messages:
                async with c.db.begin() as session:
                    await session.execute(
                        delete(ProcessedEvent).where(
                            ProcessedEvent.subscriber == subscriber,
                            ProcessedEvent.event_id.in_([m.message_id for m in messages]),
                        )
                    )
                await c.broker.publish_to_queue(spec, messages)
        sent += len(messages)
        progress(len(messages))


async def _load(
    c: EventFlow, since: datetime, source: str, after: int, tenant_id: str | None
) -> list[tuple[int, dict[str, Any]]]:
    async with c.db() as session:
        if source == "audit":
            stmt = (
                select(AuditEntry.seq, AuditEntry.envelope)
                .where(AuditEntry.time >= since, AuditEntry.seq > after)
                .order_by(AuditEntry.seq)
                .limit(BATCH)
            )
            if tenant_id is not None:
                stmt = stmt.where(AuditEntry.tenant_id == tenant_id)
        else:
            stmt = (
                select(OutboxEvent.id, OutboxEvent.envelope)
                .where(
                    OutboxEvent.channel == "events",  # not the task dispatch messages
                    OutboxEvent.created_at >= since,
                    OutboxEvent.id > after,
                )
                .order_by(OutboxEvent.id)
                .limit(BATCH)
            )
            if tenant_id is not None:
                stmt = stmt.where(OutboxEvent.tenant_id == tenant_id)
        rows = await session.execute(stmt)
        return [(int(r[0]), dict(r[1])) for r in rows]


@dataclass(frozen=True)
class DeadLetter:
    subscriber: str
    event_id: str
    routing_key: str
    reason: str


async def dead_letters(c: EventFlow, subscribers: list[str], *, requeue: bool) -> list[DeadLetter]:
    """The dead letters of each subscriber; with `requeue`, also moved back to their queues."""
    found: list[DeadLetter] = []
    for name in c.names(subscribers):
        spec = c.queues[name]
        for message in await c.broker.dead_letters(spec, limit=1000):
            reason = str(message.headers.get("x-capstan-death-reason", ""))
            found.append(DeadLetter(name, message.message_id, message.routing_key, reason))
        if requeue:
            await c.broker.requeue_dead_letters(spec)
    return found
