"""The subscriber runtime through a backend outage longer than its attempts: the event waits
(uncounted retries) and is applied exactly once, never dead-lettered; a failing handler
still is. No server is stopped: the outage is a fake database or backend that refuses the
first N calls, N > CAPSTAN_EVENT_MAX_ATTEMPTS."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.broker.port import Broker, Delivery, Message
from capstan.cache.port import CacheUnavailable
from capstan.db.engine import create_engine, sessionmaker
from capstan.db.migrate import upgrade
from capstan.events.envelope import Event
from capstan.events.topology import Topology
from capstan.observability.metrics import Metrics
from capstan.subscribers.runtime import Outcome, SubscriberRunner
from tests.conftest import embedded_settings, service_url
from tests.events.messages import document_updated

MAX_ATTEMPTS = 3
FAILURES = MAX_ATTEMPTS + 2  # longer than the attempts a failing handler gets
RETRY_DELAYS_MS = [20, 50]


class FlakyBackend:
    """Raises `errors` one write at a time, then records the writes."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.applied: list[str] = []

    def write(self, event_id: str) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.applied.append(event_id)


class FlakySubscriber:
    name: ClassVar[str] = "flaky"
    patterns: ClassVar[tuple[str, ...]] = ("document.*",)
    ordered: ClassVar[bool] = False

    def __init__(self, backend: FlakyBackend) -> None:
        self.backend = backend

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        self.backend.write(event.id)
        return None


class FlakyDatabase:
    """A session factory whose first `failures` transactions cannot connect."""

    def __init__(self, real: Any, failures: int) -> None:
        self.real = real
        self.failures = failures
        self.calls = 0

    def __call__(self) -> Any:
        return self.real()

    def begin(self) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            return self._refused()
        return self.real.begin()

    @contextlib.asynccontextmanager
    async def _refused(self) -> AsyncIterator[AsyncSession]:
        raise OperationalError("BEGIN", {}, ConnectionRefusedError(111, "Connection refused"))
        yield  # pragma: no cover


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, Topology]]:
    topology = Topology(f"t{uuid.uuid4().hex[:10]}")
    if request.param == "memory":
        from capstan.broker.memory import MemoryBroker

        memory = MemoryBroker()
        yield memory, topology
        await memory.close()
        return
    from capstan.broker.rabbitmq import RabbitBroker

    url = service_url("rabbitmq")
    rabbit = RabbitBroker(url)
    await rabbit.connect()
    yield rabbit, topology
    await rabbit.close()
    await _delete_topology(url, topology)


async def _delete_topology(url: str, topology: Topology) -> None:
    import aio_pika

    queue = topology.subscriber_queue(FlakySubscriber.name)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in [queue, f"{queue}.dead", *(f"{queue}.retry.{t}" for t in RETRY_DELAYS_MS)]:
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        with contextlib.suppress(Exception):
            await channel.exchange_delete(topology.events_exchange)


def _event() -> Message:
    return document_updated("t-outage", "x", 2)


@pytest.mark.parametrize(
    "failure", ["cache down", "database down", "cache down, then a handler error", "handler bug"]
)
async def test_an_outage_longer_than_the_attempts_delays_the_event_but_never_dead_letters_it(
    failure: str, broker: tuple[Broker, Topology], tmp_path: Path
) -> None:
    bus, topology = broker
    url = embedded_settings(tmp_path).database_url
    await upgrade(url)
    engine = create_engine(url, pool_size=2)
    db: Any = sessionmaker(engine)
    down: list[Exception] = [CacheUnavailable("redis is down")] * FAILURES
    errors: dict[str, list[Exception]] = {
        "cache down": down,
        "database down": [],  # the session fails, before the handler
        # A transient failure once the backend is back is counted from the event's own
        # attempts (still 1), not from the outage's length.
        "cache down, then a handler error": [*down, RuntimeError("transient")],
        "handler bug": [KeyError("version")] * FAILURES,
    }
    backend = FlakyBackend(errors[failure])
    if failure == "database down":
        db = FlakyDatabase(db, FAILURES)
    metrics = Metrics()
    runner = SubscriberRunner(
        FlakySubscriber(backend),
        bus,
        db,
        metrics,
        prefetch=1,
        max_attempts=MAX_ATTEMPTS,
        retry_delays_ms=RETRY_DELAYS_MS,
        topology=topology,
    )
    attempts: list[int] = []

    async def recorded(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        await runner.on_delivery(delivery)

    consumer = await bus.consume(runner.spec, recorded, prefetch=1)
    try:
        sent = _event()
        await bus.publish([sent], topology.events_exchange)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not backend.applied and not await bus.dead_letters(runner.spec):
            assert loop.time() < deadline, f"neither applied nor dead-lettered: {attempts}"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # room for a stray redelivery to show up
    finally:
        await consumer.stop()
        await engine.dispose()

    def consumed(outcome: str) -> float:
        value = metrics.registry.get_sample_value(
            "capstan_events_consumed_total", {"subscriber": "flaky", "outcome": outcome}
        )
        return value or 0.0

    dead = await bus.dead_letters(runner.spec)
    if failure == "handler bug":
        # The handler's own failure spends attempts: dead-lettered after MAX_ATTEMPTS.
        assert attempts == list(range(1, MAX_ATTEMPTS + 1))
        assert [m.message_id for m in dead] == [sent.message_id]
        assert backend.applied == []
        return
    # FAILURES outage retries, none counted, then applied once.
    if failure == "cache down, then a handler error":
        assert attempts == [1] * (FAILURES + 1) + [2]
        assert consumed("retried") == FAILURES + 1
    else:
        assert attempts == [1] * (FAILURES + 1)
        assert consumed("retried") == FAILURES
    assert backend.applied == [sent.message_id]
    assert dead == []
    assert consumed("processed") == 1
    assert consumed("dead_lettered") == 0
