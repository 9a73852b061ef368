"""RabbitMQ through aio-pika's robust connection (it reconnects and restores consumers).

Topology for a QueueSpec named Q bound to exchange X (topic, durable):
  Q                     durable, bound to X by each pattern
  Q.retry.<ms>          one per retry tier: x-message-ttl=<ms>, dead-letters back to Q
                        through the default exchange (so a retry reaches Q alone, not every
                        subscriber of X)
  Q.dead                dead letters, kept until inspected or requeued
RabbitMQ 3.10 has no delayed-message plugin here; fixed TTL tiers avoid per-message TTLs,
which only expire at the head of a queue.

With queue_type="quorum" (CAPSTAN_BROKER_QUEUE_TYPE, for a cluster) every one of these queues
is a quorum queue, replicated to a majority of nodes. Retry tiers then dead-letter
at-least-once (which needs overflow=reject-publish), so a retried message survives a node
loss between tiers. RabbitMQ before 4.0 has no priorities on quorum queues: x-max-priority is
left out and tasks of every priority share one FIFO (docs/deployment.md, "Scale-out").
The connection lists every node (capstan.node_urls) and moves to the next on each
reconnection attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Literal

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from capstan.broker.port import BrokerUnavailable, Delivery, Handler, Message, QueueSpec
from capstan.node_urls import node_urls
from capstan.retry import Backoff

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-capstan-attempt"
REASON_HEADER = "x-capstan-death-reason"
# How long a call waits for a first connection before reporting the broker unavailable.
CONNECT_WAIT_SECONDS = 10.0
# Between rounds of connection attempts over every node: 0.5, 1, 2 ... 10 s, jittered so that
# processes that lost the broker together do not all reconnect at the same instant.
CONNECT_RETRY = Backoff(0.5, 10.0, jitter="half")
# What acking on a channel that is closing or closed raises. RabbitMQ hands every message
# that channel did not ack back to its queue, so there is nothing left to do.
_CHANNEL_GONE = (
    aio_pika.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.ChannelClosed,
    aio_pika.exceptions.ConnectionClosed,
)


class _RabbitDelivery:
    def __init__(
        self,
        broker: RabbitBroker,
        spec: QueueSpec,
        incoming: AbstractIncomingMessage,
        consumer: _RabbitConsumer | None = None,
    ):
        self._broker = broker
        self._spec = spec
        self._incoming = incoming
        self._consumer = consumer
        # The channel it came on, taken while open (the property raises once it is closed).
        self._on: object = incoming.channel
        headers = dict(incoming.headers or {})
        self._attempt = int(str(headers.get(ATTEMPT_HEADER, 1)))
        self._message = Message(
            routing_key=str(headers.get("x-capstan-routing-key") or incoming.routing_key or ""),
            body=incoming.body,
            message_id=incoming.message_id or "",
            headers=headers,
            content_type=incoming.content_type or "",
            priority=incoming.priority or 0,
        )

    @property
    def message(self) -> Message:
        return self._message

    @property
    def attempt(self) -> int:
        return self._attempt

    async def ack(self) -> None:
        await self._ack("ack")

    async def ack_with(self, earlier: Sequence[Delivery]) -> None:
        mine = self._incoming.delivery_tag
        tags = {
            d._incoming.delivery_tag
            for d in earlier
            if isinstance(d, _RabbitDelivery) and d._on is self._on
        }
        consumer = self._consumer
        if (
            mine is not None
            and consumer is not None
            and len(tags) == len(earlier)
            and consumer.unsettled_through(self._on, mine) == tags | {mine}
        ):
            # Nothing else of this consumer is unsettled below `mine`: one frame acks them all.
            await self._ack("ack", multiple=True)
            for d in earlier:
                assert isinstance(d, _RabbitDelivery)
                d._settled()
            return
        for d in earlier:
            await d.ack()
        await self.ack()

    def _settled(self) -> None:
        if self._consumer is not None and self._incoming.delivery_tag is not None:
            self._consumer.untrack(self._on, self._incoming.delivery_tag)

    async def retry(self, delay_ms: int, *, count_attempt: bool = True) -> None:
        if self._channel_closing("retry"):
            return
        attempt = self._attempt + 1 if count_attempt else self._attempt
        await self._retry_copy(self._message, delay_ms, attempt)
        await self._ack("retry")

    async def dead_letter(self, reason: str) -> None:
        if self._channel_closing("dead letter"):
            return
        await self._dead_letter_copy(self._message, reason)
        await self._ack("dead letter")

    async def retry_part(self, part: Message, delay_ms: int, *, attempt: int) -> None:
        if self._consumer is None or not self._consumer.closing:
            await self._retry_copy(part, delay_ms, attempt)

    async def dead_letter_part(self, part: Message, reason: str) -> None:
        if self._consumer is None or not self._consumer.closing:
            await self._dead_letter_copy(part, reason)

    async def _retry_copy(self, message: Message, delay_ms: int, attempt: int) -> None:
        tier = self._spec.retry_tier(delay_ms)
        headers = {**message.headers, ATTEMPT_HEADER: attempt}
        await self._broker._publish_to_queue(f"{self._spec.name}.retry.{tier}", message, headers)

    async def _dead_letter_copy(self, message: Message, reason: str) -> None:
        headers = {**message.headers, REASON_HEADER: reason[:1000]}
        await self._broker._publish_to_queue(self._spec.dead_letter_queue, message, headers)

    def _channel_closing(self, settle: str) -> bool:
        """True once the consumer is stopping or its channel closed: the message goes back
        to the queue then, so a copy published now would be delivered twice, and an ack
        sent now could make RabbitMQ close the connection (see _RabbitConsumer.stop)."""
        if self._consumer is None or not self._consumer.closing:
            return False
        self._settled()
        self._left_for_redelivery(settle, None)
        return True

    async def _ack(self, settle: str, *, multiple: bool = False) -> None:
        # For a retry or dead letter whose copy is already published, leaving the message
        # to redelivery delivers it once more: a duplicate, which consumers tolerate.
        if self._channel_closing(settle):
            return
        self._settled()
        try:
            await self._incoming.ack(multiple=multiple)
        except _CHANNEL_GONE as exc:
            # Closed under us (a lost connection): not a failure of the handler, and raising
            # would only have aiormq log "Consumer callback failed".
            self._left_for_redelivery(settle, exc)

    def _left_for_redelivery(self, settle: str, exc: BaseException | None) -> None:
        log.debug(
            "channel closing, message left for redelivery",
            extra={
                "queue": self._spec.name,
                "message_id": self._message.message_id,
                "settle": settle,
                "error": repr(exc) if exc is not None else None,
            },
        )


class _RabbitConsumer:
    def __init__(self, channel: AbstractChannel, queue: AbstractQueue) -> None:
        self._channel = channel
        self._queue = queue
        self._tag: str | None = None
        self._stopping = False
        # Delivery tags not yet settled, on the (robust, so reopened) channel they came on:
        # what makes a multiple ack safe (_RabbitDelivery.ack_with).
        self._unsettled_on: object = None
        self._unsettled: set[int] = set()

    def track(self, channel: object, tag: int | None) -> None:
        if tag is None:
            return
        if channel is not self._unsettled_on:
            # A reopened channel numbers from 1 again; the old one's deliveries are void.
            self._unsettled_on, self._unsettled = channel, set()
        self._unsettled.add(tag)

    def untrack(self, channel: object, tag: int) -> None:
        if channel is self._unsettled_on:
            self._unsettled.discard(tag)

    def unsettled_through(self, channel: object, tag: int) -> set[int]:
        if channel is not self._unsettled_on:
            return set()
        return {t for t in self._unsettled if t <= tag}

    @property
    def closing(self) -> bool:
        return self._stopping or self._channel.is_closed

    async def stop(self) -> None:
        if self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
        # From here on nothing may be sent on this channel: aiormq still writes an ack
        # between its Channel.Close and the broker's Close-Ok, and RabbitMQ answers a frame
        # on a closed channel by closing the whole connection (504 CHANNEL_ERROR).
        self._stopping = True
        with contextlib.suppress(Exception):
            await self._channel.close()


QueueType = Literal["classic", "quorum"]


class _NodesConnection(RobustConnection):
    """aio-pika's robust connection (it restores channels and consumers), over several
    cluster nodes: each connection attempt after the first goes to the next node, so losing
    the connected node moves the connection to a live one instead of retrying the dead one."""

    _nodes: tuple[URL, ...] = ()
    _attempt = 0

    def __init__(self, nodes: list[str], first: int, **kwargs: Any) -> None:
        super().__init__(URL(nodes[first % len(nodes)]), **kwargs)
        self._nodes = tuple(URL(n) for n in nodes)
        self._attempt = first

    # aio-pika clears `transport` at the start of every connection attempt (and on close):
    # the one hook that sees each attempt, since the attempt itself reads `self.url`.
    @property
    def transport(self) -> Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and self._nodes:
            self.url = self._nodes[self._attempt % len(self._nodes)]
            self._attempt += 1
        self.__dict__["_transport"] = value


class RabbitBroker:
    def __init__(
        self, url: str, *, connect_timeout: float = 5.0, queue_type: QueueType = "classic"
    ) -> None:
        self._nodes = node_urls(url)
        self._queue_type = queue_type
        self._timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._publisher: AbstractChannel | None = None
        self._publisher_lock = asyncio.Lock()
        self._exchanges: dict[str, AbstractExchange] = {}
        self._admin: AbstractChannel | None = None
        self._admin_lock = asyncio.Lock()

    async def connect(self) -> None:
        # A first connect that fails is retried in the background: processes start anyway
        # and report the broker as down until it is reachable.
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._connect_forever())

    async def _connect_forever(self) -> None:
        attempt = 0
        while True:
            connection = _NodesConnection(
                self._nodes,
                attempt,
                client_properties={"connection_name": "capstan"},
                # A node that cannot be reached is left at once for the next one.
                reconnect_interval=1 if len(self._nodes) > 1 else 5,
            )
            attempt += 1
            try:
                await connection.connect(timeout=self._timeout)
                self._connection = connection
                self._connected.set()
                return
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning("rabbitmq unreachable, retrying", extra={"error": str(exc)})
                with contextlib.suppress(Exception):
                    await connection.close()
                if attempt % len(self._nodes) == 0:  # every node tried: back off
                    await asyncio.sleep(CONNECT_RETRY.delay(attempt // len(self._nodes)))

    async def _ready(self) -> AbstractRobustConnection:
        await self.connect()
        try:
            await asyncio.wait_for(self._connected.wait(), CONNECT_WAIT_SECONDS)
        except TimeoutError as exc:
            raise BrokerUnavailable("rabbitmq is not connected") from exc
        assert self._connection is not None
        return self._connection

    async def ping(self) -> None:
        conn = self._connection
        if conn is None or conn.is_closed or not conn.connected.is_set():
            raise BrokerUnavailable("rabbitmq is not connected")

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._connection is not None:
            await self._connection.close()
        self._publisher = self._admin = None

    async def _publisher_channel(self) -> AbstractChannel:
        async with self._publisher_lock:
            if self._publisher is None or self._publisher.is_closed:
                conn = await self._ready()
                # on_return_raises: a mandatory message no queue takes is an error (the port's
                # contract), not a confirm that hides it was dropped.
                self._publisher = await conn.channel(publisher_confirms=True, on_return_raises=True)
                self._exchanges.clear()
            return self._publisher

    async def _publisher_exchange(self, name: str) -> AbstractExchange:
        channel = await self._publisher_channel()
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = self._exchanges[name] = await self._exchange(channel, name)
        return exchange

    async def _exchange(self, channel: AbstractChannel, name: str) -> AbstractExchange:
        return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)

    async def publish(
        self, messages: Sequence[Message], exchange: str, *, mandatory: bool = True
    ) -> None:
        if not messages:
            return
        try:
            target = await self._publisher_exchange(exchange)
            # Confirms arrive asynchronously: publish the batch at once, then wait for all.
            await asyncio.gather(
                *(
                    target.publish(
                        _amqp(m, m.headers), routing_key=m.routing_key, mandatory=mandatory
                    )
                    for m in messages
                )
            )
        except BrokerUnavailable:
            raise
        except (TimeoutError, aio_pika.exceptions.AMQPError, OSError, RuntimeError) as exc:
            await self._drop_publisher()
            raise BrokerUnavailable(f"publish not confirmed: {exc!r}") from exc

    async def _drop_publisher(self) -> None:
        """After a failed publish the next one opens a new channel. A channel restored by the
        robust connection after a cluster node died kept getting every publish into some
        quorum queues nacked while the queues were healthy (tests/scale/
        test_rabbitmq_cluster.py, under CPU load: the relay retried for 300 s); a new channel
        publishes. Cheap when the failure was something else."""
        async with self._publisher_lock:
            channel, self._publisher = self._publisher, None
            self._exchanges.clear()
        if channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 2)

    async def publish_to_queue(
        self, spec: QueueSpec, messages: Sequence[Message], *, declare: bool = True
    ) -> None:
        try:
            # Inside the try: a declaration on a connection that just dropped is an outage too.
            if declare:
                await self.declare(spec)
            await asyncio.gather(
                *(self._publish_to_queue(spec.name, m, m.headers) for m in messages)
            )
        except (TimeoutError, aio_pika.exceptions.AMQPError, OSError, RuntimeError) as exc:
            await self._drop_publisher()
            raise BrokerUnavailable(f"publish not confirmed: {exc!r}") from exc

    async def _publish_to_queue(
        self, queue: str, message: Message, headers: dict[str, Any]
    ) -> None:
        channel = await self._publisher_channel()
        # Keep the original routing key: the default exchange routes by queue name.
        headers = {**headers, "x-capstan-routing-key": message.routing_key}
        await channel.default_exchange.publish(_amqp(message, headers), routing_key=queue)

    async def _admin_channel(self) -> AbstractChannel:
        """One long-lived channel for declarations and dead-letter handling: opening and
        closing a channel per call races channel-id reuse in the client under load."""
        async with self._admin_lock:
            if self._admin is None or self._admin.is_closed:
                conn = await self._ready()
                self._admin = await conn.channel()
            return self._admin

    async def declare(self, spec: QueueSpec) -> None:
        await self._declare_on(await self._admin_channel(), spec)

    async def _declare_on(self, channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
        exchange = await self._exchange(channel, spec.exchange)
        arguments: dict[str, Any] = self._type_arguments()
        if spec.single_active:
            arguments["x-single-active-consumer"] = True
        if spec.max_priority and self._queue_type == "classic":
            arguments["x-max-priority"] = spec.max_priority
        queue = await channel.declare_queue(spec.name, durable=True, arguments=arguments)
        for pattern in spec.patterns:
            await queue.bind(exchange, routing_key=pattern)
        for tier in spec.retry_delays_ms:
            await channel.declare_queue(
                f"{spec.name}.retry.{tier}",
                durable=True,
                arguments={
                    **self._type_arguments(dead_letters=True),
                    "x-message-ttl": tier,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": spec.name,
                },
            )
        await channel.declare_queue(
            spec.dead_letter_queue, durable=True, arguments=self._type_arguments()
        )
        return queue

    def _type_arguments(self, *, dead_letters: bool = False) -> dict[str, Any]:
        if self._queue_type == "classic":
            return {}
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if dead_letters:
            # At-most-once (the default) drops a dead letter its target cannot take.
            arguments |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        return arguments

    async def consume(self, spec: QueueSpec, handler: Handler, *, prefetch: int) -> _RabbitConsumer:
        conn = await self._ready()
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await self._declare_on(channel, spec)
        consumer = _RabbitConsumer(channel, queue)

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            consumer.track(incoming.channel, incoming.delivery_tag)
            await handler(_RabbitDelivery(self, spec, incoming, consumer))

        consumer._tag = await queue.consume(on_message, no_ack=False)
        return consumer

    async def queue_depth(self, queue: str) -> int:
        conn = await self._ready()
        # A passive declare of a missing queue closes its channel: use a throwaway one.
        channel = await conn.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        except aio_pika.exceptions.ChannelClosed:
            return 0
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def dead_letters(self, spec: QueueSpec, limit: int = 100) -> list[Message]:
        channel = await self._admin_channel()
        await self._declare_on(channel, spec)
        queue = await channel.get_queue(spec.dead_letter_queue)
        seen: list[AbstractIncomingMessage] = []
        try:
            while len(seen) < limit:
                incoming = await queue.get(no_ack=False, fail=False)
                if incoming is None:
                    break
                seen.append(incoming)
            return [_RabbitDelivery(self, spec, m).message for m in seen]
        finally:
            # Looked at, not taken: every one goes back where it was.
            for incoming in seen:
                await incoming.nack(requeue=True)

    async def requeue_dead_letters(self, spec: QueueSpec) -> int:
        channel = await self._admin_channel()
        await self._declare_on(channel, spec)
        queue = await channel.get_queue(spec.dead_letter_queue)
        moved = 0
        while (incoming := await queue.get(no_ack=False, fail=False)) is not None:
            delivery = _RabbitDelivery(self, spec, incoming)
            headers = {
                k: v
                for k, v in delivery.message.headers.items()
                if k not in (ATTEMPT_HEADER, REASON_HEADER)
            }
            try:
                await self._publish_to_queue(spec.name, delivery.message, headers)
            except BaseException:
                await incoming.nack(requeue=True)
                raise
            await incoming.ack()
            moved += 1
        return moved


def _amqp(message: Message, headers: dict[str, Any]) -> aio_pika.Message:
    return aio_pika.Message(
        body=message.body,
        message_id=message.message_id,
        content_type=message.content_type,
        headers=headers,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority or None,
    )
