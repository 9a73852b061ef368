"""The in-process broker used by `capstan dev`: the same semantics as RabbitMQ in one process
(topic routing, per-queue delivery, acknowledgements, delayed retry, dead letters).

Unlike RabbitMQ it keeps nothing when the process ends; what the relay had published and no
subscriber had handled is replayed from the outbox at the next start (capstan.relay.replay)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from capstan.broker.port import (
    BrokerUnavailable,
    Delivery,
    Handler,
    Message,
    QueueSpec,
)

log = logging.getLogger(__name__)


@dataclass
class _Queue:
    spec: QueueSpec
    items: asyncio.PriorityQueue[tuple[int, int, Message, int]] = field(
        default_factory=asyncio.PriorityQueue
    )
    dead: list[Message] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def put(self, item: tuple[Message, int], position: int | None = None) -> None:
        """Enqueue at the tail, or back at `position` (a handed-back delivery keeps its place
        in the queue, as RabbitMQ requeues it)."""
        message, attempt = item
        priority = min(message.priority, self.spec.max_priority) if self.spec.max_priority else 0
        place = next(self._seq) if position is None else position
        self.items.put_nowait((-priority, place, message, attempt))

    async def get(self) -> tuple[Message, int, int]:
        """The next message, its attempt, and its position (for `put` when handed back)."""
        _priority, position, message, attempt = await self.items.get()
        return message, attempt, position


class _MemoryDelivery:
    def __init__(
        self,
        broker: MemoryBroker,
        queue: _Queue,
        message: Message,
        attempt: int,
        consumer: _MemoryConsumer,
    ):
        self._broker = broker
        self._queue = queue
        self._message = message
        self._attempt = attempt
        self._consumer = consumer
        self.settled = False

    @property
    def message(self) -> Message:
        return self._message

    @property
    def attempt(self) -> int:
        return self._attempt

    async def ack(self) -> None:
        if self._consumer_gone("ack"):
            return
        self.settled = True

    async def ack_with(self, earlier: Sequence[Delivery]) -> None:
        for delivery in earlier:
            await delivery.ack()
        await self.ack()

    async def retry(self, delay_ms: int, *, count_attempt: bool = True) -> None:
        if self._consumer_gone("retry"):
            return
        self.settled = True
        attempt = self._attempt + 1 if count_attempt else self._attempt
        self._retry_copy(self._message, delay_ms, attempt)

    async def dead_letter(self, reason: str) -> None:
        if self._consumer_gone("dead letter"):
            return
        self.settled = True
        self._dead_letter_copy(self._message, reason)

    async def retry_part(self, part: Message, delay_ms: int, *, attempt: int) -> None:
        if not self._consumer_gone("retry part"):
            self._retry_copy(part, delay_ms, attempt)

    async def dead_letter_part(self, part: Message, reason: str) -> None:
        if not self._consumer_gone("dead letter part"):
            self._dead_letter_copy(part, reason)

    def _retry_copy(self, message: Message, delay_ms: int, attempt: int) -> None:
        tier = self._queue.spec.retry_tier(delay_ms)
        item = (message, attempt)
        self._broker._later(tier / 1000, lambda: self._queue.put(item))

    def _dead_letter_copy(self, message: Message, reason: str) -> None:
        headers = {**message.headers, "x-capstan-death-reason": reason}
        self._queue.dead.append(_with_headers(message, headers))

    def _consumer_gone(self, what: str) -> bool:
        # Like a closed AMQP channel: stopping the consumer already put the unsettled
        # message back in the queue (see `consume`), so settling now would copy it.
        if not self._consumer.stopped:
            return False
        log.debug(
            "consumer stopped, message left for redelivery",
            extra={"queue": self._queue.spec.name, "settle": what},
        )
        return True


class _MemoryConsumer:
    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class MemoryBroker:
    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._timers: set[asyncio.TimerHandle] = set()

    async def connect(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    async def publish(
        self, messages: Sequence[Message], exchange: str, *, mandatory: bool = True
    ) -> None:
        routes = [
            [
                queue
                for queue in self._queues.values()
                if queue.spec.exchange == exchange and queue.spec.takes(message.routing_key)
            ]
            for message in messages
        ]
        if mandatory and not all(routes):
            unroutable = next(m.routing_key for m, r in zip(messages, routes, strict=True) if not r)
            raise BrokerUnavailable(f"no queue is bound for {unroutable!r} on {exchange}")
        for message, queues in zip(messages, routes, strict=True):
            for queue in queues:
                queue.put((message, 1))

    async def publish_to_queue(
        self, spec: QueueSpec, messages: Sequence[Message], *, declare: bool = True
    ) -> None:
        if declare:
            await self.declare(spec)
        queue = self._queues.get(spec.name)
        if queue is None:
            raise BrokerUnavailable(f"no queue {spec.name!r}")
        for message in messages:
            queue.put((message, 1))

    async def declare(self, spec: QueueSpec) -> None:
        self._queues.setdefault(spec.name, _Queue(spec))

    async def consume(self, spec: QueueSpec, handler: Handler, *, prefetch: int) -> _MemoryConsumer:
        await self.declare(spec)
        queue = self._queues[spec.name]
        consumer = _MemoryConsumer()

        async def worker() -> None:
            while True:
                message, attempt, position = await queue.get()
                delivery = _MemoryDelivery(self, queue, message, attempt, consumer)
                item = (message, attempt)
                try:
                    await handler(delivery)
                except asyncio.CancelledError:
                    # Like an unacked AMQP delivery on a closed channel: back to the queue.
                    if not delivery.settled:
                        queue.put(item, position)
                    raise
                except Exception:
                    log.exception("handler failed without settling", extra={"queue": spec.name})
                    if not delivery.settled:
                        self._later(1.0, lambda item=item, at=position: queue.put(item, at))
                else:
                    if not delivery.settled:
                        queue.put(item, position)

        # Deliveries in flight at once, as RabbitMQ's prefetch; handed out in queue order.
        workers = prefetch
        consumer._tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        return consumer

    async def queue_depth(self, queue: str) -> int:
        if queue in self._queues:
            return self._queues[queue].items.qsize()
        owner = self._queues.get(queue.removesuffix(".dead"))
        return len(owner.dead) if owner is not None and queue.endswith(".dead") else 0

    async def dead_letters(self, spec: QueueSpec, limit: int = 100) -> list[Message]:
        await self.declare(spec)
        return list(self._queues[spec.name].dead[:limit])

    async def requeue_dead_letters(self, spec: QueueSpec) -> int:
        await self.declare(spec)
        queue = self._queues[spec.name]
        moved, queue.dead = queue.dead, []
        for message in moved:
            queue.put((message, 1))
        return len(moved)

    def _later(self, seconds: float, action: object) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(timer)
            action()  # type: ignore[operator]

        timer = loop.call_later(seconds, fire)
        self._timers.add(timer)


def _with_headers(message: Message, headers: dict[str, object]) -> Message:
    return Message(
        message.routing_key, message.body, message.message_id, dict(headers), message.content_type
    )
