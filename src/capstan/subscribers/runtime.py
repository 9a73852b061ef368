"""The runtime every subscriber runs in: parsing, dedup, transactions, retries, metrics."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.broker.port import Broker, BrokerUnavailable, Consumer, Delivery, Message, QueueSpec
from capstan.db.schema import ProcessedEvent
from capstan.db.upsert import insert_ignore
from capstan.events.envelope import Event, MalformedEvent, parse_event
from capstan.events.topology import Topology
from capstan.observability.context import reset_request_id, set_request_id
from capstan.observability.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a handler wants published once its transaction has committed."""

    publish: list[tuple[str, Message]] = field(default_factory=list)  # (exchange, message)


class Subscriber(Protocol):
    name: ClassVar[str]
    patterns: ClassVar[tuple[str, ...]]
    # True when effects must follow queue order (one consumer, one message at a time).
    ordered: ClassVar[bool]

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        """Apply the event inside `session`'s transaction; raise to have it retried."""
        ...


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
        max_attempts: int,
        retry_delays_ms: list[int],
        topology: Topology,
    ) -> None:
        self.subscriber = subscriber
        self.spec = queue_spec(subscriber, retry_delays_ms, topology)
        self._broker = broker
        self._db = db
        self._metrics = metrics
        self._prefetch = 1 if subscriber.ordered else prefetch
        self._max_attempts = max_attempts
        self._base_delay_ms = min(retry_delays_ms)
        self._max_delay_ms = max(retry_delays_ms)
        self._consumer: Consumer | None = None
        self.last_handled = 0.0  # monotonic time of the last event handled

    @property
    def name(self) -> str:
        return self.subscriber.name

    async def start(self) -> None:
        self._consumer = await self._broker.consume(
            self.spec, self.on_delivery, prefetch=self._prefetch
        )

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def on_delivery(self, delivery: Delivery) -> None:
        name = self.name
        try:
            event = parse_event(delivery.message.body)
        except MalformedEvent as exc:
            log.error(
                "malformed event dead-lettered", extra={"subscriber": name, "error": str(exc)}
            )
            await delivery.dead_letter(f"malformed: {exc}")
            self._metrics.events_consumed.labels(name, "dead_lettered").inc()
            return
        token = set_request_id(event.envelope.get("requestid"))
        started = time.perf_counter()
        try:
            outcome, fresh = await self._apply(event)
        except Exception as exc:
            await self._failed(delivery, event, exc)
            return
        finally:
            reset_request_id(token)
        for exchange, message in outcome.publish if outcome else []:
            try:
                await self._broker.publish([message], exchange=exchange, mandatory=False)
            except BrokerUnavailable as exc:
                # The effect is committed; followers (realtime) recover through the audit log.
                log.warning("follow-up publish lost", extra={"subscriber": name, "error": str(exc)})
        await delivery.ack()
        self.last_handled = time.monotonic()
        lag = (datetime.now(UTC) - event.time).total_seconds()
        self._metrics.subscriber_lag.labels(name).set(max(lag, 0.0))
        self._metrics.subscriber_duration.labels(name).observe(time.perf_counter() - started)
        if fresh:
            self._metrics.event_latency.labels(name).observe(max(lag, 0.0))
        self._metrics.events_consumed.labels(name, "processed" if fresh else "duplicate").inc()

    async def _apply(self, event: Event) -> tuple[Outcome | None, bool]:
        async with self._db.begin() as session:
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
        # Exponential backoff with full jitter, rounded up to a retry tier by the broker.
        ceiling = self._base_delay_ms * 2 ** (delivery.attempt - 1)
        delay = int(ceiling / 2 + random.random() * ceiling / 2)
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


def _outage(exc: BaseException) -> bool:
    from capstan.cache.port import CacheUnavailable
    from capstan.db.errors import is_database_down
    from capstan.search.port import SearchUnavailable

    return isinstance(
        exc, CacheUnavailable | SearchUnavailable | BrokerUnavailable
    ) or is_database_down(exc)
