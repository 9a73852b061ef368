"""The broker port: durable topic publishing with confirms, and acknowledged consumption with
delayed retry and dead letters. Every adapter passes tests/contract/test_broker_contract.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class BrokerUnavailable(Exception):
    """The broker cannot be reached, or did not confirm a publish."""


@dataclass(frozen=True, slots=True)
class Message:
    routing_key: str
    body: bytes
    message_id: str
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str = "application/cloudevents+json"
    priority: int = 0  # honoured by queues declared with max_priority > 0


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable queue bound to the events exchange, with its retry tiers and dead letters.

    `retry_delays_ms` are the delays a retry can wait (a retry takes the smallest tier at least
    as long as asked, else the longest). `single_active` lets only one consumer receive at a
    time, across processes, which keeps the queue's order for order-sensitive consumers.
    """

    name: str
    patterns: tuple[str, ...]
    retry_delays_ms: tuple[int, ...] = (1000, 5000, 30000)
    single_active: bool = False
    exchange: str = "capstan.events"
    max_priority: int = 0  # > 0: higher-priority messages are delivered first

    def takes(self, routing_key: str) -> bool:
        """True when one of the queue's patterns binds `routing_key`."""
        return any(topic_matches(p, routing_key) for p in self.patterns)

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dead"

    def retry_tier(self, delay_ms: int) -> int:
        for tier in sorted(self.retry_delays_ms):
            if tier >= delay_ms:
                return tier
        return max(self.retry_delays_ms)


class Delivery(Protocol):
    """One received message; exactly one of ack, retry or dead_letter settles it.

    Settling once the consumer is stopping, or has lost its channel, raises nothing: a retry
    or dead letter asked for then is not carried out, and a message not acked goes back to
    the queue, to be delivered again as it was."""

    @property
    def message(self) -> Message: ...

    @property
    def attempt(self) -> int:
        """1 on first delivery; counted retries count up (uncounted retries and redeliveries
        after a crash do not)."""
        ...

    async def ack(self) -> None: ...

    async def ack_with(self, earlier: Sequence[Delivery]) -> None:
        """Ack this delivery and `earlier` (unsettled deliveries of the same consumer that
        arrived before it). RabbitMQ does it in one frame when nothing else of the consumer
        is unsettled below this one, else one ack each."""
        ...

    async def retry(self, delay_ms: int, *, count_attempt: bool = True) -> None:
        """Deliver again to this queue only, after about `delay_ms`.

        The redelivery carries `attempt + 1`, or the same `attempt` with
        `count_attempt=False`: for a retry that says nothing about the message (a backend it
        needs is down, a worker hands it back while draining), so it never brings the message
        closer to its dead letter."""
        ...

    async def dead_letter(self, reason: str) -> None: ...

    async def retry_part(self, part: Message, delay_ms: int, *, attempt: int) -> None:
        """Put `part`, one of several events this message carries, into this queue's retry
        tier for about `delay_ms`, to be delivered alone with `attempt`. This delivery stays
        unsettled (the caller settles it once every part is); a no-op once the consumer is
        stopping, as the whole message is then delivered again."""
        ...

    async def dead_letter_part(self, part: Message, reason: str) -> None:
        """Dead-letter `part` alone (see retry_part); this delivery stays unsettled."""
        ...


Handler = Callable[[Delivery], Awaitable[None]]


class Consumer(Protocol):
    async def stop(self) -> None:
        """Stop receiving; messages not yet settled go back to the queue."""
        ...


class Broker(Protocol):
    async def connect(self) -> None:
        """Start connecting; must not fail when the broker is down (it reconnects)."""
        ...

    async def ping(self) -> None:
        """Raise BrokerUnavailable unless a live connection exists."""
        ...

    async def close(self) -> None: ...

    async def publish(
        self, messages: Sequence[Message], exchange: str, *, mandatory: bool = True
    ) -> None:
        """Publish durably; returns once the broker confirmed every message. With
        `mandatory`, a message no queue is bound for is an error (BrokerUnavailable) rather
        than silently dropped."""
        ...

    async def publish_to_queue(
        self, spec: QueueSpec, messages: Sequence[Message], *, declare: bool = True
    ) -> None:
        """Publish straight into one queue (the relay's batches, replays aimed at one
        subscriber), confirmed. `declare=False` skips declaring a queue the caller already
        declared; a queue that does not exist then is an error (BrokerUnavailable)."""
        ...

    async def declare(self, spec: QueueSpec) -> None:
        """Create the queue, its bindings, retry tiers and dead-letter queue (idempotent)."""
        ...

    async def consume(self, spec: QueueSpec, handler: Handler, *, prefetch: int) -> Consumer:
        """Declare `spec` and run `handler` for each message, up to `prefetch` at once."""
        ...

    async def queue_depth(self, queue: str) -> int:
        """Messages ready in a queue (0 for a queue that does not exist)."""
        ...

    async def dead_letters(self, spec: QueueSpec, limit: int = 100) -> list[Message]:
        """Look at (without removing) the dead letters of a queue."""
        ...

    async def requeue_dead_letters(self, spec: QueueSpec) -> int:
        """Move every dead letter back to the queue with a fresh attempt count."""
        ...


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` zero or more words."""
    return _match(pattern.split("."), routing_key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])
