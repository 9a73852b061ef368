"""The relay's batching on PostgreSQL: an idle relay publishes a commit at once, a busy one lets
the next batch gather the commits of its linger window (one transaction and one confirm for
all of them), and a relay that is not the lock holder publishes nothing.

The relay is built directly on a database of this test, with the in-process broker; the linger
window is closed by the test (the relay's `linger` hook), never by the clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from capstan.broker.memory import MemoryBroker
from capstan.broker.port import Broker, BrokerUnavailable, Delivery, Message, QueueSpec
from capstan.db.dialect import POSTGRESQL
from capstan.db.engine import create_engine, sessionmaker
from capstan.db.fastpath import FastPath
from capstan.events import batch
from capstan.events.envelope import encode
from capstan.events.outbox import OUTBOX_INSERT, envelope
from capstan.observability.metrics import Metrics
from capstan.relay.relay import RELAY_LOCK_KEY, OutboxRelay
from tests.conftest import service_url

pytestmark = pytest.mark.postgres

DEADLINE = 30.0


@pytest.fixture
def database(fresh_postgres_url: str) -> str:
    return fresh_postgres_url


class Relay:
    def __init__(
        self,
        url: str,
        linger: float,
        declare: Sequence[QueueSpec] = (),
        broker: Broker | None = None,
    ) -> None:
        self.broker: Broker = broker or MemoryBroker()
        self.metrics = Metrics()
        self.engine = create_engine(url, pool_size=2)
        self.fast = FastPath(url, max_size=2)
        self.relay = OutboxRelay(
            self.engine,
            sessionmaker(self.engine),
            self.broker,
            self.metrics,
            dialect=POSTGRESQL,
            poll_seconds=0.05,
            fast=self.fast,
            linger_seconds=linger,
            declare=declare or [QueueSpec("relay-test", ("#",))],
        )
        self.windows: list[float] = []
        self.window_open = asyncio.Event()
        self.close_window = asyncio.Event()

        async def linger(stopping: asyncio.Event, seconds: float) -> None:
            self.windows.append(seconds)
            self.window_open.set()
            await self.close_window.wait()
            self.close_window.clear()

        self.relay.linger = linger

    def batches(self) -> list[float]:
        """(count, sum) of the batch-size histogram: batches published, events in them."""
        get = self.metrics.registry.get_sample_value
        return [
            get("capstan_relay_batch_size_count") or 0,
            get("capstan_relay_batch_size_sum") or 0,
        ]

    async def until_published(self, events: int) -> None:
        async with asyncio.timeout(DEADLINE):
            while self.batches()[1] < events:  # noqa: ASYNC110 - a metric, not an event
                await asyncio.sleep(0.01)


async def commit_events(url: str, n: int, key: str = "document.updated") -> list[str]:
    """`n` events, each in a transaction of its own (as n API writes would); their ids."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    entity, action = key.split(".")
    ids = []
    try:
        for _ in range(n):
            env = envelope(
                source="test",
                entity=entity,
                action=action,
                tenant_id="t-relay",
                subject=f"documents/{uuid.uuid4().hex}",
                data={},
                request_id=None,
            )
            await conn.execute(
                f"{OUTBOX_INSERT} VALUES ($1, $2, $3, $4, 'events', $5::jsonb, now())",
                env["id"],
                "t-relay",
                key,
                env["subject"],
                encode(env).decode(),
            )
            ids.append(env["id"])
    finally:
        await conn.close()
    return ids


@contextlib.asynccontextmanager
async def running(r: Relay) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    task = asyncio.create_task(r.relay.run(stopping))
    try:
        yield
    finally:
        stopping.set()
        r.close_window.set()
        await asyncio.wait_for(task, DEADLINE)
        await r.fast.close()
        await r.engine.dispose()


async def test_a_busy_relay_gathers_the_commits_of_its_linger_window(database: str) -> None:
    r = Relay(database, linger=60.0)
    async with running(r):
        await commit_events(database, 1)
        await r.until_published(1)  # idle: published without waiting for any window
        assert r.batches() == [1, 1]
        async with asyncio.timeout(DEADLINE):
            await r.window_open.wait()  # the relay now holds the next batch open
        await commit_events(database, 5)  # five transactions during the window
        r.close_window.set()
        await r.until_published(6)
        assert r.batches() == [2, 6], "the five commits of the window went out as one batch"
        assert 0 < r.windows[0] <= 60.0


async def test_an_idle_relay_publishes_at_once(database: str) -> None:
    r = Relay(database, linger=0.0)
    async with running(r):
        for n in range(1, 4):
            await commit_events(database, 1)
            await r.until_published(n)
        assert r.batches() == [3, 3]
        assert r.windows == []  # no window without a linger


async def test_a_relay_without_the_lock_publishes_nothing(database: str) -> None:
    await commit_events(database, 2)
    r = Relay(database, linger=0.0)
    dsn = make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", RELAY_LOCK_KEY)
            assert await r.relay.relay_once() == 0  # the standby sends nothing
        assert await r.relay.relay_once() == 2  # and takes over once the lock is free
        unsent = await holder.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        assert unsent == 0
    finally:
        await holder.close()
        await r.fast.close()
        await r.engine.dispose()


async def test_each_subscriber_gets_a_batch_as_one_message_of_the_events_it_takes(
    database: str,
) -> None:
    everything = QueueSpec("all-events", ("#",))
    documents = QueueSpec("documents-only", ("document.*",))
    nobody = QueueSpec("webhooks-only", ("webhook.*",))
    ids = {
        "doc": await commit_events(database, 2),
        "task": await commit_events(database, 2, "task.succeeded"),
        "doc2": await commit_events(database, 1, "document.deleted"),
    }
    r = Relay(database, linger=0.0, declare=[everything, documents, nobody])
    try:
        assert await r.relay.relay_once() == 5
    finally:
        await r.fast.close()
        await r.engine.dispose()

    got: dict[str, list[Message]] = {}
    for spec in (everything, documents):
        received: list[Message] = []

        async def keep(delivery: Delivery, into: list[Message] = received) -> None:
            into.append(delivery.message)
            await delivery.ack()

        consumer = await r.broker.consume(spec, keep, prefetch=10)
        async with asyncio.timeout(DEADLINE):
            while not received:  # noqa: ASYNC110 - the memory broker hands it over at once
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # room for a second message, were there one
        await consumer.stop()
        got[spec.name] = received

    def event_ids(message: Message) -> list[str]:
        assert batch.is_batch(message)
        return [json.loads(line)["id"] for line in batch.lines(message)]

    [every] = got["all-events"]
    assert event_ids(every) == ids["doc"] + ids["task"] + ids["doc2"]  # commit order
    assert every.headers["count"] == 5
    [docs] = got["documents-only"]
    assert event_ids(docs) == ids["doc"] + ids["doc2"]
    assert await r.broker.queue_depth(nobody.name) == 0  # nothing it takes: no message


@pytest.mark.rabbitmq
async def test_a_subscriber_queue_deleted_under_the_relay_is_declared_again_and_nothing_lost(
    database: str,
) -> None:
    import aio_pika

    from capstan.broker.rabbitmq import RabbitBroker
    from tests.conftest import delete_namespace

    url = service_url("rabbitmq")
    namespace = f"relayq{uuid.uuid4().hex[:8]}"
    spec = QueueSpec(f"{namespace}.sub.all", ("#",), exchange=f"{namespace}.events")
    broker = RabbitBroker(url)
    await broker.connect()
    r = Relay(database, linger=0.0, declare=[spec], broker=broker)
    try:
        await commit_events(database, 1)
        assert await r.relay.relay_once() == 1  # declares the queue, then sends
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(spec.name)  # an operator's mistake, or a reset node

        [second] = await commit_events(database, 1)
        with pytest.raises(BrokerUnavailable):  # unroutable: an error, not a silent drop
            await r.relay.relay_once()
        assert await r.relay.relay_once() == 1  # declared again, sent again

        received: list[Message] = []

        async def keep(delivery: Delivery) -> None:
            received.append(delivery.message)
            await delivery.ack()

        consumer = await broker.consume(spec, keep, prefetch=10)
        async with asyncio.timeout(DEADLINE):
            while not received:  # noqa: ASYNC110 - a delivery, polled
                await asyncio.sleep(0.02)
        await consumer.stop()
        ids = [json.loads(line)["id"] for m in received for line in batch.lines(m)]
        assert ids == [second]  # the first went with the deleted queue; the second is kept
    finally:
        await r.fast.close()
        await r.engine.dispose()
        await broker.close()
        await delete_namespace(url, namespace)
