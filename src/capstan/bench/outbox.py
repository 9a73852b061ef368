"""What the scratch database says about the events a measurement wrote: the outbox rows of an
id range (lo, hi], how many the relay published, and which subscribers processed them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from capstan.bench.latency import EventTimes, expected_subscribers

if TYPE_CHECKING:
    from capstan.container import Container


class OutboxProgress(NamedTuple):
    rows: int  # outbox rows (events and task messages)
    published: int  # of them, published by the relay
    expected: int  # subscriber effects the events must have (one per bound subscriber)
    done: int  # subscriber effects recorded in processed_events


async def max_outbox_id(container: Container) -> int:
    from sqlalchemy import text

    async with container.engine.connect() as conn:
        return int(await conn.scalar(text("SELECT coalesce(max(id), 0) FROM outbox")) or 0)


async def outbox_progress(
    container: Container, lo: int, hi: int, patterns: Mapping[str, tuple[str, ...]]
) -> OutboxProgress:
    """The outbox ids in (lo, hi]: task messages (channel `tasks`) go to workers, events to
    the subscribers whose bindings match their routing key."""
    from sqlalchemy import text

    async with container.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT channel, routing_key, count(*), count(published_at) FROM outbox "
                    "WHERE id > :lo AND id <= :hi GROUP BY channel, routing_key"
                ),
                {"lo": lo, "hi": hi},
            )
        ).all()
        done = await conn.scalar(
            text(
                "SELECT count(*) FROM processed_events p JOIN outbox o ON o.event_id = p.event_id "
                "WHERE o.id > :lo AND o.id <= :hi AND o.channel = 'events' "
                "AND p.subscriber = ANY(:subs)"
            ),
            {"lo": lo, "hi": hi, "subs": list(patterns)},
        )
    expected = sum(
        int(r[2]) * len(expected_subscribers(str(r[1]), patterns)) for r in rows if r[0] == "events"
    )
    return OutboxProgress(
        rows=sum(int(r[2]) for r in rows),
        published=sum(int(r[3]) for r in rows),
        expected=expected,
        done=int(done or 0),
    )


async def event_times(container: Container, lo: int, hi: int) -> list[EventTimes]:
    """Per event of (lo, hi]: the envelope `time` (commit), `published_at` (relay) and each
    subscriber's `processed_at`."""
    from sqlalchemy import text

    async with container.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT o.event_id, o.routing_key, o.envelope->>'time', o.published_at, "
                    "p.subscriber, p.processed_at FROM outbox o "
                    "LEFT JOIN processed_events p ON p.event_id = o.event_id "
                    "WHERE o.id > :lo AND o.id <= :hi"
                ),
                {"lo": lo, "hi": hi},
            )
        ).all()
    events: dict[str, EventTimes] = {}
    for event_id, routing_key, at, published, subscriber, processed in rows:
        e = events.get(event_id)
        if e is None:
            e = events[event_id] = EventTimes(
                event_id, routing_key, datetime.fromisoformat(at), published
            )
        if subscriber is not None:
            e.processed[subscriber] = processed
    return list(events.values())
