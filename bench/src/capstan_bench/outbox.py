"""What a measurement's events became: the outbox rows of an id range (lo, hi] and how many the
relay published (the scratch database), how many each subscriber handled (its own counters on
/metrics), and per event when the audit log recorded it.

The subscribers' PostgreSQL fast paths keep no processed_events row (their effects are
idempotent by themselves), so the database cannot say when the cache or the notifier handled
an event: the counters say that it was, and each subscriber's end-to-end histogram how fast."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from capstan_bench.latency import EventTimes, expected_subscribers

if TYPE_CHECKING:
    from capstan.container import Container
    from capstan_bench.processes import Samples

CONSUMED = "capstan_events_consumed_total"
# A retried event is handled again later: only these outcomes end an event's handling.
FINAL_OUTCOMES = frozenset({"processed", "duplicate", "dead_lettered"})


class OutboxProgress(NamedTuple):
    rows: int  # outbox rows (events and task messages)
    published: int  # of them, published by the relay
    expected: int  # subscriber handlings the events need (one per bound subscriber)
    done: int  # of them, counted by the subscribers (each capped at what it must handle)


def handled(before: Samples, after: Samples) -> dict[str, int]:
    """Per subscriber, the events it finished handling between two scrapes."""
    out: dict[str, int] = {}
    for (name, labels), value in after.items():
        tags = dict(labels)
        if name == CONSUMED and tags.get("outcome") in FINAL_OUTCOMES:
            d = int(value - before.get((name, labels), 0.0))
            out[tags["subscriber"]] = out.get(tags["subscriber"], 0) + d
    return out


async def max_outbox_id(container: Container) -> int:
    from sqlalchemy import text

    async with container.engine.connect() as conn:
        return int(await conn.scalar(text("SELECT coalesce(max(id), 0) FROM outbox")) or 0)


async def outbox_progress(
    container: Container,
    lo: int,
    hi: int,
    patterns: Mapping[str, tuple[str, ...]],
    done_by: Mapping[str, int],
) -> OutboxProgress:
    """The outbox ids in (lo, hi]: task messages (channel `tasks`) go to workers, events to
    the subscribers whose bindings match their routing key; `done_by` is `handled()` since
    the range began."""
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
    expected_by: dict[str, int] = {}
    for channel, routing_key, count, _published in rows:
        if channel == "events":
            for name in expected_subscribers(str(routing_key), patterns):
                expected_by[name] = expected_by.get(name, 0) + int(count)
    return OutboxProgress(
        rows=sum(int(r[2]) for r in rows),
        published=sum(int(r[3]) for r in rows),
        expected=sum(expected_by.values()),
        done=sum(min(done_by.get(name, 0), n) for name, n in expected_by.items()),
    )


async def event_times(container: Container, lo: int, hi: int) -> list[EventTimes]:
    """Per event of (lo, hi]: the envelope `time` (commit), `published_at` (relay) and the
    audit log's `recorded_at` (the ordered subscriber: the last one done under load)."""
    from sqlalchemy import text

    async with container.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT o.event_id, o.routing_key, o.envelope->>'time', o.published_at, "
                    "a.recorded_at FROM outbox o "
                    "LEFT JOIN audit_log a ON a.event_id = o.event_id "
                    "WHERE o.id > :lo AND o.id <= :hi AND o.channel = 'events'"
                ),
                {"lo": lo, "hi": hi},
            )
        ).all()
    events: list[EventTimes] = []
    for event_id, routing_key, at, published, recorded in rows:
        e = EventTimes(event_id, routing_key, datetime.fromisoformat(at), published)
        if recorded is not None:
            e.processed["audit"] = recorded
        events.append(e)
    return events
