"""The runtime every subscriber runs in: parsing, dedup, transactions, retries, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.broker.port import (
    Broker,
    BrokerUnavailable,
    Consumer,
    Delivery,
    Handler,
    Message,
    QueueSpec,
)
from capstan.db.schema import ProcessedEvent
from capstan.db.upsert import insert_ignore
from capstan.events import batch
from capstan.events.envelope import Event, MalformedEvent, parse_event
from capstan.events.topology import Topology
from capstan.observability.context import reset_request_id, set_request_id
from capstan.observability.metrics import Metrics
from capstan.retry import Backoff

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a handler wants published once its transaction has committed."""

    publish: list[tuple[str, Message]] = field(default_factory=list)  # (exchange, message)


class Subscriber(Protocol):
    name: ClassVar[str]
    patterns: ClassVar[tuple[str, ...]]
    # True when effects must follow queue order: one consumer, events applied one after the
    # other (in batches that commit together, see SubscriberRunner).
    ordered: ClassVar[bool]

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        """Apply the event inside `session`'s transaction; raise to have it retried."""
        ...


# A subscriber may also offer `apply_batch(events) -> list[Outcome | None]`, set to None when
# unavailable (e.g. on SQLite): it applies the events in order with its own single statement
# and its own idempotency (a unique key on its effect rows), instead of the runtime's
# transaction and processed_events row per event. It returns (outcome, fresh) per event, in the
# events' order; fresh is False for an event it had already applied (a duplicate).
ApplyBatch = Callable[[list[Event]], Awaitable[list[tuple["Outcome | None", bool]]]]

# A subscriber whose effect is idempotent and order-free by itself (versioned writes outside
# the database: the cache's tombstones keep the highest version, the index refuses any version
# at or below the one it holds) may offer `apply_idempotent(event)`. The runtime then calls it
# with no database transaction and keeps no processed_events row: a redelivery applies it
# again, harmlessly. That saves a commit per event and keeps a pooled connection from being
# held while the effect waits (the indexer's bulk request).
ApplyIdempotent = Callable[[Event], Awaitable["Outcome | None"]]


def batched(subscriber: Subscriber) -> bool:
    """Ordered subscribers and those marked `batched` apply what waits in their queue at once."""
    return subscriber.ordered or bool(getattr(subscriber, "batched", False))


def queue_spec(subscriber: Subscriber, retry_delays_ms: list[int], topology: Topology) -> QueueSpec:
    return QueueSpec(
        name=topology.subscriber_queue(subscriber.name),
        exchange=topology.events_exchange,
        patterns=subscriber.patterns,
        retry_delays_ms=tuple(retry_delays_ms),
        single_active=subscriber.ordered,
    )


class SubscriberRunner:
    def __init__(
        self,
        subscriber: Subscriber,
        broker: Broker,
        db: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        *,
        prefetch: int,
        ordered_batch: int = 64,
        max_attempts: int,
        retry_delays_ms: list[int],
        topology: Topology,
        record_all: bool = False,
    ) -> None:
        self.subscriber = subscriber
        self.spec = queue_spec(subscriber, retry_delays_ms, topology)
        self._broker = broker
        self._db = db
        self._metrics = metrics
        # An ordered subscriber takes up to `ordered_batch` deliveries at once and applies them
        # in queue order, in one transaction: the commit and the follow-up publish confirm are
        # paid once per batch instead of once per event, and the broker's next delivery never
        # waits for an ack. Batches form only when events queue up, so an idle subscriber
        # still handles each event as soon as it arrives.
        # Unordered subscribers marked `batched` (notifier, embedder) drain the same way,
        # without the single active consumer: a batch costs one lookup and one commit instead
        # of one per event.
        self._batched = batched(subscriber)
        self._prefetch = ordered_batch if self._batched else prefetch
        self._apply_batch: ApplyBatch | None = getattr(subscriber, "apply_batch", None)
        # The in-process broker forgets its queues on a crash: there every handling is on
        # record (processed_events), which is what relay/replay.py replays from at start.
        self._apply_idempotent: ApplyIdempotent | None = (
            None if record_all else getattr(subscriber, "apply_idempotent", None)
        )
        # Deliveries waiting for the ordered loop, each with the future its handler call
        # waits on: a broker handler returns once its delivery is settled (port contract).
        self._intake: asyncio.Queue[tuple[Delivery, asyncio.Future[None]]] = asyncio.Queue()
        self._drainer: asyncio.Task[None] | None = None
        # A batched subscriber's follow-ups (audit -> realtime) go out from one task, in
        # order, while the loop applies the next batch: the confirm wait is off its path.
        # Bounded, so a slow broker slows the loop down instead of piling messages up.
        self._outbound: asyncio.Queue[dict[str, list[Message]]] = asyncio.Queue(maxsize=16)
        self._publisher: asyncio.Task[None] | None = None
        self._stopping = False
        self._busy = False
        self._max_attempts = max_attempts
        self._max_delay_ms = max(retry_delays_ms)
        self._backoff = Backoff(min(retry_delays_ms), self._max_delay_ms)
        self._consumer: Consumer | None = None
        self.last_handled = 0.0  # monotonic time of the last event handled

    @property
    def name(self) -> str:
        return self.subscriber.name

    async def start(self) -> None:
        if self._batched:
            self._stopping = False
            self._drainer = asyncio.create_task(self._drain(), name=f"ordered {self.name}")
            self._publisher = asyncio.create_task(
                self._publish_loop(), name=f"follow-ups {self.name}"
            )
            handler: Handler = self._enqueue
        else:
            handler = self.on_delivery
        self._consumer = await self._broker.consume(self.spec, handler, prefetch=self._prefetch)

    async def stop(self) -> None:
        if self._drainer is not None:
            # Let a batch in hand finish, acks included (bounded), then stop the consumer so
            # that nothing more arrives, then drop what waits: unsettled, it is redelivered
            # (RabbitMQ) or put back in its place (memory).
            self._stopping = True
            if self._busy:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._drainer), 5.0)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
            self._drainer = None
            while not self._intake.empty():
                _, settled = self._intake.get_nowait()
                if not settled.done():
                    settled.set_result(None)
        if self._publisher is not None:
            # Follow-ups of committed batches: out before stopping if the broker takes them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbound.join(), 5.0)
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None

    async def on_delivery(self, delivery: Delivery) -> None:
        events = await self._events_of(delivery)
        if self._apply_idempotent is not None and len(events) > 1:
            # No transaction to share: a batch's events go at once (the indexer gathers them
            # into its bulk requests).
            await asyncio.gather(*(self._handle_one(d, e) for d, e in events))
            return
        for one, event in events:
            await self._handle_one(one, event)

    async def _events_of(self, delivery: Delivery) -> list[tuple[Delivery, Event]]:
        """The events a delivery carries, each with the delivery that settles it: the
        delivery itself for a one-event message, a part of it for a batch
        (capstan.events.batch). Malformed ones are dead-lettered (alone) and left out."""
        if not batch.is_batch(delivery.message):
            event = await self._parse(delivery)
            return [] if event is None else [(delivery, event)]
        lines = batch.lines(delivery.message)
        if not lines:
            await delivery.ack()
            return []
        countdown = _Countdown(delivery, len(lines))
        events: list[tuple[Delivery, Event]] = []
        for line in lines:
            part = _Part(countdown, line)
            event = await self._parse(part)
            if event is not None:
                part.event = event
                events.append((part, event))
        return events

    async def _parse(self, delivery: Delivery) -> Event | None:
        """The delivery's event, or None once a malformed one has been dead-lettered."""
        try:
            return parse_event(delivery.message.body)
        except MalformedEvent as exc:
            log.error(
                "malformed event dead-lettered", extra={"subscriber": self.name, "error": str(exc)}
            )
            await delivery.dead_letter(f"malformed: {exc}")
            self._metrics.events_consumed.labels(self.name, "dead_lettered").inc()
            return None

    async def _handle_one(self, delivery: Delivery, event: Event) -> None:
        token = set_request_id(event.envelope.get("requestid"))
        started = time.perf_counter()
        try:
            outcome, fresh = await self._apply(event)
        except Exception as exc:
            await self._failed(delivery, event, exc)
            return
        finally:
            reset_request_id(token)
        await self._follow_up([outcome])
        await delivery.ack()
        self._done(event, fresh, started)

    async def _enqueue(self, delivery: Delivery) -> None:
        settled = asyncio.get_running_loop().create_future()
        self._intake.put_nowait((delivery, settled))
        await settled

    async def _drain(self) -> None:
        """The ordered subscriber's loop: whatever has arrived, in arrival order, a batch at a
        time."""
        while not self._stopping:
            batch = [await self._intake.get()]
            while len(batch) < self._prefetch and not self._intake.empty():
                batch.append(self._intake.get_nowait())
            self._busy = True
            try:
                await self._handle_batch([delivery for delivery, _ in batch])
            except Exception:
                # Unacked deliveries come back when the channel does; the loop must go on.
                log.exception("ordered batch failed", extra={"subscriber": self.name})
            finally:
                self._busy = False
                for _, settled in batch:
                    if not settled.done():
                        settled.set_result(None)

    async def _handle_batch(self, deliveries: list[Delivery]) -> None:
        events = [e for delivery in deliveries for e in await self._events_of(delivery)]
        # A relay batch may carry hundreds of events: at most `prefetch` per transaction.
        for start in range(0, len(events), self._prefetch):
            await self._apply_together(events[start : start + self._prefetch])

    async def _apply_together(self, events: list[tuple[Delivery, Event]]) -> None:
        if len(events) <= 1:
            for delivery, event in events:
                await self._handle_one(delivery, event)
            return
        started = time.perf_counter()
        try:
            if self._apply_batch is not None:
                results = await self._apply_batch([e for _, e in events])
                applied = [(d, e, *r) for (d, e), r in zip(events, results, strict=True)]
            elif self._apply_idempotent is not None:  # no transaction to share: one by one
                applied = [(d, e, await self._apply_idempotent(e), True) for d, e in events]
            else:
                async with self._db.begin() as session:
                    applied = [(d, e, *await self._apply_in(session, e)) for d, e in events]
        except Exception:
            # Nothing was committed. One by one, so that only the failing event is retried or
            # dead-lettered and the others go through.
            for delivery, event in events:
                await self._handle_one(delivery, event)
            return
        await self._follow_up([outcome for _, _, outcome, _ in applied])
        # The messages all of whose events are now settled, in arrival order: one frame on
        # RabbitMQ when it can be.
        settled = [m for d, _, _, _ in applied if (m := _settles(d)) is not None]
        if settled:
            await settled[-1].ack_with(settled[:-1])
        for _, event, _, fresh in applied:
            self._done(event, fresh, started)
        self._metrics.subscriber_batch.labels(self.name).observe(len(applied))

    async def _follow_up(self, outcomes: list[Outcome | None]) -> None:
        """Publish what the committed handlers asked for, in order, one confirm wait per
        exchange; a batched subscriber hands them to its publishing task instead."""
        by_exchange: dict[str, list[Message]] = {}
        for outcome in outcomes:
            for exchange, message in outcome.publish if outcome else []:
                by_exchange.setdefault(exchange, []).append(message)
        if not by_exchange:
            return
        if self._publisher is not None and not self._publisher.done():
            await self._outbound.put(by_exchange)
            return
        await self._publish(by_exchange)

    async def _publish_loop(self) -> None:
        """Whatever follow-ups have queued up, in order, in as few confirm waits as can be."""
        while True:
            merged = await self._outbound.get()
            taken = 1
            while not self._outbound.empty():
                for exchange, messages in self._outbound.get_nowait().items():
                    merged.setdefault(exchange, []).extend(messages)
                taken += 1
            try:
                await self._publish(merged)
            except Exception:
                # Committed effects whose followers recover through the audit log; go on.
                log.exception("follow-up publish failed", extra={"subscriber": self.name})
            finally:
                for _ in range(taken):
                    self._outbound.task_done()

    async def _publish(self, by_exchange: dict[str, list[Message]]) -> None:
        for exchange, messages in by_exchange.items():
            try:
                await self._broker.publish(messages, exchange=exchange, mandatory=False)
            except BrokerUnavailable as exc:
                # The effect is committed; followers (realtime) recover through the audit log.
                log.warning(
                    "follow-up publish lost", extra={"subscriber": self.name, "error": str(exc)}
                )

    def _done(self, event: Event, fresh: bool, started: float) -> None:
        name = self.name
        self.last_handled = time.monotonic()
        lag = (datetime.now(UTC) - event.time).total_seconds()
        self._metrics.subscriber_lag.labels(name).set(max(lag, 0.0))
        self._metrics.subscriber_duration.labels(name).observe(time.perf_counter() - started)
        if fresh:
            self._metrics.event_latency.labels(name).observe(max(lag, 0.0))
        self._metrics.events_consumed.labels(name, "processed" if fresh else "duplicate").inc()

    async def _apply(self, event: Event) -> tuple[Outcome | None, bool]:
        if self._apply_batch is not None:
            (result,) = await self._apply_batch([event])
            return result
        if self._apply_idempotent is not None:
            return await self._apply_idempotent(event), True
        async with self._db.begin() as session:
            return await self._apply_in(session, event)

    async def _apply_in(self, session: AsyncSession, event: Event) -> tuple[Outcome | None, bool]:
        """Record the event as processed by this subscriber and apply it, in `session`'s
        transaction; (outcome, False) for an event this subscriber has already processed."""
        fresh = await insert_ignore(
            session,
            ProcessedEvent.__table__,  # type: ignore[arg-type]
            {"subscriber": self.name, "event_id": event.id, "processed_at": datetime.now(UTC)},
        )
        if not fresh:
            return None, False
        return await self.subscriber.handle(event, session), True

    async def _failed(self, delivery: Delivery, event: Event, exc: Exception) -> None:
        name = self.name
        if _outage(exc):
            # A backend being down says nothing about this event: retry it uncounted, so
            # however long the outage lasts it never dead-letters the event, and at the
            # longest tier, so a down backend is not hammered.
            log.warning(
                "backend unavailable, event retried later",
                extra={
                    "subscriber": name,
                    "event_id": event.id,
                    "attempt": delivery.attempt,
                    "error": repr(exc),
                },
            )
            await delivery.retry(self._max_delay_ms, count_attempt=False)
            self._metrics.events_consumed.labels(name, "retried").inc()
            return
        if delivery.attempt >= self._max_attempts:
            log.error(
                "event dead-lettered after retries",
                extra={"subscriber": name, "event_id": event.id, "error": repr(exc)},
            )
            await delivery.dead_letter(f"{type(exc).__name__}: {exc}")
            self._metrics.events_consumed.labels(name, "dead_lettered").inc()
            return
        # Rounded up to a retry tier by the broker.
        delay = int(self._backoff.delay(delivery.attempt))
        log.warning(
            "event handling failed, will retry",
            extra={
                "subscriber": name,
                "event_id": event.id,
                "attempt": delivery.attempt,
                "delay_ms": delay,
                "error": repr(exc),
            },
        )
        await delivery.retry(delay)
        self._metrics.events_consumed.labels(name, "retried").inc()


class _Countdown:
    """A batch message and how many of its events are still unsettled."""

    def __init__(self, delivery: Delivery, events: int) -> None:
        self.delivery = delivery
        self.left = events

    def settle_one(self) -> Delivery | None:
        """Count one event settled; the message once the last one is (to be acked)."""
        self.left -= 1
        return self.delivery if self.left == 0 else None


class _Part:
    """One event of a batch message, settled on its own: a retry or dead letter sends this
    event alone (broker `retry_part`); the message is acked once its last event is settled.
    Left unsettled (a stop, a crash), the whole message is delivered again: its events that
    were applied are then duplicates, which subscribers absorb."""

    def __init__(self, countdown: _Countdown, line: bytes) -> None:
        self._countdown = countdown
        self._line = line
        self._settled = False
        self.event: Event | None = None

    @property
    def message(self) -> Message:
        return batch.part_message(self._line, self.event, self._countdown.delivery.message)

    @property
    def attempt(self) -> int:
        return self._countdown.delivery.attempt

    def settle(self) -> Delivery | None:
        """Mark this event settled; the batch message if it is now to be acked."""
        if self._settled:
            return None
        self._settled = True
        return self._countdown.settle_one()

    async def ack(self) -> None:
        if (whole := self.settle()) is not None:
            await whole.ack()

    async def ack_with(self, earlier: Sequence[Delivery]) -> None:
        for delivery in earlier:
            await delivery.ack()
        await self.ack()

    async def retry(self, delay_ms: int, *, count_attempt: bool = True) -> None:
        attempt = self.attempt + 1 if count_attempt else self.attempt
        await self._countdown.delivery.retry_part(self.message, delay_ms, attempt=attempt)
        await self.ack()

    async def dead_letter(self, reason: str) -> None:
        await self._countdown.delivery.dead_letter_part(self.message, reason)
        await self.ack()

    async def retry_part(self, part: Message, delay_ms: int, *, attempt: int) -> None:
        await self._countdown.delivery.retry_part(part, delay_ms, attempt=attempt)

    async def dead_letter_part(self, part: Message, reason: str) -> None:
        await self._countdown.delivery.dead_letter_part(part, reason)


def _settles(delivery: Delivery) -> Delivery | None:
    """What to ack for `delivery` now that its event is applied: itself, its batch message
    once the message's last event is, or nothing yet."""
    return delivery.settle() if isinstance(delivery, _Part) else delivery


def _outage(exc: BaseException) -> bool:
    from capstan.cache.port import CacheUnavailable
    from capstan.db.errors import is_database_down
    from capstan.search.port import SearchUnavailable

    return isinstance(
        exc, CacheUnavailable | SearchUnavailable | BrokerUnavailable
    ) or is_database_down(exc)
