"""The `<ns>.realtime` wire format: what the audit subscriber publishes for the gateway.

One message per audit batch, not per event: its body is the batch's audited envelopes, each
with its `seq`, one JSON object per line (NDJSON: no raw newline inside one), in `seq` order.
A fan-out of N events costs one publish, one broker route and one gateway read instead of N
(`capstan bench tasks`: subscriber CPU per task 1.5 → 1.2 ms, RabbitMQ 1.5 → 1.3).
The gateway (gateway/src/realtime/wire.ts) reads this and the single-envelope messages of
earlier versions alike (docs/contracts/events.md, "Broker names")."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from capstan.broker.port import Message
from capstan.events import batch
from capstan.events.envelope import NDJSON, Event, encode

CONTENT_TYPE = NDJSON
ROUTING_KEY = "audited"


def audited_line(event: Event, seq: int) -> bytes:
    """The envelope as received plus `"seq"`, as one line: the received bytes (PostgreSQL's
    jsonb text, from the relay) are spliced rather than encoded again when they are one
    object on one line; anything else is encoded."""
    body = event.body.rstrip()
    if body.endswith(b"}") and len(body) > 2 and b"\n" not in body and "seq" not in event.envelope:
        return b'%s,"seq":%d}' % (body[:-1], seq)
    return encode({**event.envelope, "seq": seq})


def batch_message(audited: Sequence[tuple[Event, int]]) -> Message:
    """One realtime message for `audited` (events with their seq, in seq order)."""
    first, last = audited[0], audited[-1]
    return Message(
        routing_key=ROUTING_KEY,
        body=b"\n".join(audited_line(event, seq) for event, seq in audited),
        message_id=f"audit-{first[1]}-{last[1]}",
        headers={"count": len(audited), "seq": last[1]},
        content_type=CONTENT_TYPE,
    )


def read_batch(message: Message) -> list[dict[str, Any]]:
    """The envelopes of a realtime message, in order (for tests and tools; the gateway has
    its own reader)."""
    if not batch.is_batch(message):
        return [json.loads(message.body)]
    return [json.loads(line) for line in batch.lines(message)]
