"""Embedded mode's crash recovery: hand subscribers the events the in-process broker forgot.

The relay marks an outbox row published once the broker has it. RabbitMQ keeps it from then on
(durable queues, publisher confirms); the in-process broker of `capstan dev` keeps it in memory
only, so a crash (or any stop) between the relay's commit and a subscriber's commit would lose
the event for that subscriber. What each subscriber has durably handled is on record
(`processed_events`, written in the transaction of its effect), so a starting process with the
in-process broker replays, into each subscriber's queue, every published event that subscriber
has no record of, oldest first, before its relay publishes anything new. Subscribers are
idempotent, so an event handled in the instant before the crash is only a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.broker.port import Broker, Message, QueueSpec
from capstan.db.schema import OutboxEvent, ProcessedEvent
from capstan.events.envelope import encode

log = logging.getLogger(__name__)

PAGE = 1000


async def replay_unhandled(
    db: async_sessionmaker[AsyncSession],
    broker: Broker,
    subscribers: Sequence[tuple[str, QueueSpec]],
    *,
    since: datetime,
) -> dict[str, int]:
    """Queue again, per (subscriber name, its queue), the events published at or after `since`
    that it has not processed; how many per subscriber.

    `since` keeps replay within the retention of `processed_events`: older records may have
    been deleted, and their events would look unhandled."""
    replayed: dict[str, int] = {}
    for name, spec in subscribers:
        count = 0
        after = 0
        while True:
            async with db() as session:
                rows = list(
                    await session.scalars(
                        select(OutboxEvent)
                        .where(
                            OutboxEvent.channel == "events",
                            OutboxEvent.published_at.is_not(None),
                            OutboxEvent.published_at >= since,
                            OutboxEvent.id > after,
                            ~exists().where(
                                ProcessedEvent.subscriber == name,
                                ProcessedEvent.event_id == OutboxEvent.event_id,
                            ),
                        )
                        .order_by(OutboxEvent.id)
                        .limit(PAGE)
                    )
                )
            if not rows:
                break
            after = rows[-1].id
            messages = [_message(row) for row in rows if spec.takes(row.routing_key)]
            if messages:
                await broker.publish_to_queue(spec, messages)
                count += len(messages)
        replayed[name] = count
        if count:
            log.warning(
                "replayed events a stopped process had not handled",
                extra={"subscriber": name, "events": count},
            )
    return replayed


def _message(row: OutboxEvent) -> Message:
    # As the relay sends it (capstan.relay.relay._message), for the events channel.
    return Message(
        routing_key=row.routing_key,
        body=encode(row.envelope),
        message_id=row.event_id,
        headers={"tenantid": row.tenant_id},
        content_type="application/cloudevents+json",
    )
