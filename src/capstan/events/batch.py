"""The relay's wire format into subscriber queues: one message per relay batch and subscriber.

The relay publishes each batch it reads from the outbox as ONE message into the queue of each
subscriber that takes any of its events (the subscriber's patterns decide, as the topic
bindings would), instead of one message per event through the topic exchange: a task's three
events cost the broker, the relay and every subscriber one message per batch, not three each.
The body is the events the subscriber takes, in commit order, one envelope per line (NDJSON:
PostgreSQL's jsonb text and our compact JSON never hold a raw newline). The subscriber runtime
settles each event on its own (a retried or dead-lettered event is sent again alone, as a
one-event message) and acks the message once every event in it is settled.

One-event messages (`application/cloudevents+json`: replays, and what earlier versions'
relays published) are read alike."""

from __future__ import annotations

from collections.abc import Sequence

from capstan.broker.port import Message
from capstan.events.envelope import CONTENT_TYPE as EVENT_CONTENT_TYPE
from capstan.events.envelope import NDJSON, Event

ROUTING_KEY = "batch"


def batch_message(events: Sequence[tuple[str, bytes]]) -> Message:
    """One message for `events` ((event id, envelope bytes) in commit order)."""
    return Message(
        routing_key=ROUTING_KEY,
        body=b"\n".join(body for _, body in events),
        message_id=f"batch-{events[0][0]}",
        headers={"count": len(events)},
        content_type=NDJSON,
    )


def is_batch(message: Message) -> bool:
    return message.content_type == NDJSON


def lines(message: Message) -> list[bytes]:
    """The envelopes of a batch message, in order (blank lines ignored)."""
    return [line for line in message.body.split(b"\n") if line.strip()]


def part_message(line: bytes, event: Event | None, batch: Message) -> Message:
    """One event of `batch` as the one-event message a retry or dead letter sends on its own
    (`event` is None for a line that did not parse: it keeps the batch's ids)."""
    if event is None:
        return Message(
            routing_key=batch.routing_key,
            body=line,
            message_id=batch.message_id,
            headers={},
            content_type=EVENT_CONTENT_TYPE,
        )
    return Message(
        routing_key=event.routing_key,
        body=line,
        message_id=event.id,
        headers={"tenantid": event.tenant_id},
        content_type=EVENT_CONTENT_TYPE,
    )
