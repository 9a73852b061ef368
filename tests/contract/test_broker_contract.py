"""The broker port against RabbitMQ and the in-process broker: the same behaviour."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from capstan.broker.port import Broker, BrokerUnavailable, Delivery, Message, QueueSpec


@dataclass
class Setup:
    broker: Broker
    namespace: str
    specs: list[QueueSpec] = field(default_factory=list)

    @property
    def exchange(self) -> str:
        return f"{self.namespace}.events"

    def spec(self, *patterns: str, single_active: bool = False) -> QueueSpec:
        spec = QueueSpec(
            name=f"{self.namespace}.{uuid.uuid4().hex[:8]}",
            patterns=patterns,
            retry_delays_ms=(100, 300),
            single_active=single_active,
            exchange=self.exchange,
        )
        self.specs.append(spec)
        return spec

    async def publish(self, *keys: str) -> list[Message]:
        messages = [Message(k, f"body-{i}".encode(), uuid.uuid4().hex) for i, k in enumerate(keys)]
        await self.broker.publish(messages, exchange=self.exchange)
        return messages


@pytest.fixture(
    params=[
        "memory",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("rabbitmq-quorum", marks=pytest.mark.rabbitmq),
    ]
)
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    namespace = f"ct{uuid.uuid4().hex[:10]}"
    if request.param == "memory":
        from capstan.broker.memory import MemoryBroker

        memory = MemoryBroker()
        yield Setup(memory, namespace)
        await memory.close()
        return
    from capstan.broker.rabbitmq import RabbitBroker
    from tests.conftest import delete_namespace, service_url

    url = service_url("rabbitmq")
    rabbit = RabbitBroker(
        url, queue_type="quorum" if request.param.endswith("quorum") else "classic"
    )
    await rabbit.connect()
    yield Setup(rabbit, namespace)
    await rabbit.close()
    await delete_namespace(url, namespace)


class Inbox:
    """Collects deliveries; `policy` decides how each is settled."""

    def __init__(self, policy: str = "ack") -> None:
        self.policy = policy
        self.got: list[tuple[str, str, int]] = []  # (routing key, message id, attempt)
        self.changed = asyncio.Condition()

    async def __call__(self, delivery: Delivery) -> None:
        message = delivery.message
        seen = (message.routing_key, message.message_id, delivery.attempt)
        if self.policy == "hold":
            self.got.append(seen)
        if self.policy == "retry-once" and delivery.attempt == 1:
            await delivery.retry(100)
        elif self.policy == "dead":
            await delivery.dead_letter("no thanks")
        elif self.policy == "hold":
            await asyncio.sleep(3600)
        else:
            await delivery.ack()
        # Recorded once settled, so a test that stops the consumer next loses nothing.
        self.got.append(seen)
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async def enough() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: len(self.got) >= count)

        await asyncio.wait_for(enough(), timeout)


async def test_published_messages_reach_matching_queues_once_each(setup: Setup) -> None:
    documents, everything = setup.spec("document.*"), setup.spec("#")
    inbox_docs, inbox_all = Inbox(), Inbox()
    consumers = [
        await setup.broker.consume(documents, inbox_docs, prefetch=4),
        await setup.broker.consume(everything, inbox_all, prefetch=4),
    ]
    sent = await setup.publish("document.created", "task.succeeded", "document.deleted")
    await inbox_docs.wait_for(2)
    await inbox_all.wait_for(3)
    await asyncio.sleep(0.3)  # room for anything wrongly delivered twice to show up
    for consumer in consumers:
        await consumer.stop()
    assert sorted(g[1] for g in inbox_docs.got) == sorted([sent[0].message_id, sent[2].message_id])
    assert sorted(g[1] for g in inbox_all.got) == sorted(m.message_id for m in sent)
    assert all(attempt == 1 for _, _, attempt in inbox_all.got)
    assert {g[0] for g in inbox_all.got} == {
        "document.created",
        "task.succeeded",
        "document.deleted",
    }


async def test_a_retry_comes_back_later_to_that_queue_only(setup: Setup) -> None:
    retrying, other = setup.spec("document.*"), setup.spec("document.*")
    inbox_retry, inbox_other = Inbox("retry-once"), Inbox()
    consumers = [
        await setup.broker.consume(retrying, inbox_retry, prefetch=2),
        await setup.broker.consume(other, inbox_other, prefetch=2),
    ]
    [sent] = await setup.publish("document.updated")
    await inbox_retry.wait_for(2)
    await asyncio.sleep(0.3)
    for consumer in consumers:
        await consumer.stop()
    assert inbox_retry.got == [
        ("document.updated", sent.message_id, 1),
        ("document.updated", sent.message_id, 2),
    ]
    assert inbox_other.got == [("document.updated", sent.message_id, 1)]


async def test_an_uncounted_retry_keeps_the_attempt_number(setup: Setup) -> None:
    spec = setup.spec("document.*")
    got: list[int] = []
    done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.attempt)
        if len(got) == 1:
            await delivery.retry(100)  # counted: the handler failed
        elif len(got) <= 3:
            await delivery.retry(100, count_attempt=False)  # e.g. a backend is down
        else:
            await delivery.ack()
            done.set()

    consumer = await setup.broker.consume(spec, handler, prefetch=1)
    await setup.publish("document.updated")
    await asyncio.wait_for(done.wait(), 10)
    await asyncio.sleep(0.3)  # room for a stray copy to show up
    await consumer.stop()
    assert got == [1, 2, 2, 2]
    assert await setup.broker.dead_letters(spec) == []


async def test_an_uncounted_retry_comes_back_to_that_queue_only(setup: Setup) -> None:
    retrying, other = setup.spec("document.*"), setup.spec("document.*")
    got: list[tuple[str, int]] = []

    async def handler(delivery: Delivery) -> None:
        got.append((delivery.message.message_id, delivery.attempt))
        if len(got) == 1:
            await delivery.retry(300, count_attempt=False)
        else:
            await delivery.ack()

    inbox_other = Inbox()
    consumers = [
        await setup.broker.consume(retrying, handler, prefetch=1),
        await setup.broker.consume(other, inbox_other, prefetch=1),
    ]
    [sent] = await setup.publish("document.deleted")
    await _until(lambda: len(got) >= 2)
    await asyncio.sleep(0.3)
    for consumer in consumers:
        await consumer.stop()
    assert got == [(sent.message_id, 1), (sent.message_id, 1)]
    assert inbox_other.got == [("document.deleted", sent.message_id, 1)]


@pytest.mark.parametrize("settle", ["ack", "retry", "retry-uncounted", "dead_letter"])
async def test_settling_after_the_consumer_stopped_leaves_the_message_to_redelivery(
    setup: Setup, settle: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A draining worker hands messages back while its consumer's channel closes: that raises
    # nothing, copies nothing, and the message comes back once, as it was.
    caplog.set_level(logging.DEBUG, logger="capstan.broker")
    spec = setup.spec("document.*")
    held: list[Delivery] = []

    async def hold(delivery: Delivery) -> None:
        held.append(delivery)
        await asyncio.sleep(3600)

    consumer = await setup.broker.consume(spec, hold, prefetch=1)
    [sent] = await setup.publish("document.created")
    await _until(lambda: bool(held))
    await consumer.stop()

    stale = held[0]
    if settle == "ack":
        await stale.ack()
    elif settle == "retry":
        await stale.retry(100)
    elif settle == "retry-uncounted":
        await stale.retry(100, count_attempt=False)
    else:
        await stale.dead_letter("too late")
    assert any(
        "left for redelivery" in r.getMessage() and r.levelno == logging.DEBUG
        for r in caplog.records
    )

    again = Inbox()
    consumer = await setup.broker.consume(spec, again, prefetch=1)
    await again.wait_for(1)
    await asyncio.sleep(0.5)  # past the retry tier: a copy would show up
    await consumer.stop()
    assert again.got == [("document.created", sent.message_id, 1)]
    assert await setup.broker.dead_letters(spec) == []


async def test_stopping_a_consumer_while_it_hands_messages_back_is_quiet_and_loses_nothing(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker draining on shutdown: every delivery is handed back (`retry(0)`) while its
    # consumer stops. Settles racing the channel's close must neither fail the callback
    # ("Consumer callback failed") nor make RabbitMQ drop the connection (504).
    spec = setup.spec("task.*")

    async def hand_back(delivery: Delivery) -> None:
        await delivery.retry(0, count_attempt=False)

    consumer = await setup.broker.consume(spec, hand_back, prefetch=8)
    sent = await setup.publish(*["task.run"] * 300)
    await asyncio.sleep(0.15)
    await consumer.stop()
    await asyncio.sleep(0.2)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    await setup.broker.ping()

    everything = Inbox()
    consumer = await setup.broker.consume(spec, everything, prefetch=50)
    await _until(lambda: {g[1] for g in everything.got} >= {m.message_id for m in sent})
    await consumer.stop()
    assert {attempt for _, _, attempt in everything.got} == {1}


async def test_dead_letters_are_kept_inspectable_and_requeueable(setup: Setup) -> None:
    spec = setup.spec("task.*")
    dead_inbox = Inbox("dead")
    consumer = await setup.broker.consume(spec, dead_inbox, prefetch=1)
    [sent] = await setup.publish("task.failed")
    await dead_inbox.wait_for(1)
    await consumer.stop()

    for _ in range(50):
        letters = await setup.broker.dead_letters(spec)
        if letters:
            break
        await asyncio.sleep(0.05)
    assert [m.message_id for m in letters] == [sent.message_id]
    assert letters[0].headers["x-capstan-death-reason"] == "no thanks"
    assert letters[0].routing_key == "task.failed"
    assert [m.message_id for m in await setup.broker.dead_letters(spec)] == [sent.message_id]

    assert await setup.broker.requeue_dead_letters(spec) == 1
    again = Inbox()
    consumer = await setup.broker.consume(spec, again, prefetch=1)
    await again.wait_for(1)
    await consumer.stop()
    assert again.got == [("task.failed", sent.message_id, 1)]
    assert await setup.broker.dead_letters(spec) == []


async def test_an_unsettled_message_is_redelivered_after_its_consumer_stops(setup: Setup) -> None:
    spec = setup.spec("document.*")
    stuck = Inbox("hold")
    consumer = await setup.broker.consume(spec, stuck, prefetch=1)
    [sent] = await setup.publish("document.created")
    await _until(lambda: bool(stuck.got))
    await consumer.stop()

    second = Inbox()
    consumer = await setup.broker.consume(spec, second, prefetch=1)
    await second.wait_for(1)
    await consumer.stop()
    assert second.got[0][1] == sent.message_id


async def _until(condition: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.02)


async def test_queue_depth_counts_ready_and_dead_messages(setup: Setup) -> None:
    spec = setup.spec("task.*")
    await setup.broker.declare(spec)
    assert await setup.broker.queue_depth(f"{spec.name}-missing") == 0
    await setup.publish("task.a", "task.b")

    async def two_ready() -> bool:
        return await setup.broker.queue_depth(spec.name) == 2

    await _until_async(two_ready)
    dead = Inbox("dead")
    consumer = await setup.broker.consume(spec, dead, prefetch=2)
    await dead.wait_for(2)
    await consumer.stop()

    async def two_dead() -> bool:
        return await setup.broker.queue_depth(spec.dead_letter_queue) == 2

    await _until_async(two_dead)
    assert await setup.broker.queue_depth(spec.name) == 0


async def _until_async(condition: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.05)


async def test_ack_with_settles_exactly_the_batch(setup: Setup) -> None:
    """A batch acked at once (one frame on RabbitMQ when nothing else is unsettled below it)
    settles its deliveries and no other: an earlier one left unsettled is redelivered."""
    spec = setup.spec("document.*")
    held: list[Delivery] = []
    release = asyncio.Event()

    async def hold(delivery: Delivery) -> None:
        held.append(delivery)
        await release.wait()

    consumer = await setup.broker.consume(spec, hold, prefetch=20)
    first = await setup.publish(*["document.created"] * 5)
    await _until(lambda: len(held) == 5)
    await held[4].ack_with(held[:4])  # the whole prefix: one frame
    second = await setup.publish(*["document.updated"] * 5)
    await _until(lambda: len(held) == 10)
    # held[5] stays unsettled: acking 6..8 at once must not take it along.
    await held[8].ack_with(held[6:8])
    await held[9].ack()
    release.set()
    await consumer.stop()

    again = Inbox()
    consumer = await setup.broker.consume(spec, again, prefetch=20)
    await again.wait_for(1)
    await asyncio.sleep(0.3)  # room for anything wrongly left unacked to show up
    await consumer.stop()
    assert [g[1] for g in again.got] == [second[0].message_id]
    assert {m.message_id for m in first}.isdisjoint(g[1] for g in again.got)


async def test_parts_of_a_message_are_retried_and_dead_lettered_alone(setup: Setup) -> None:
    """A message carrying several events settles each on its own: a part sent to retry comes
    back alone with the attempt asked for, a part dead-lettered is kept alone with its reason,
    and the message itself is acked once, never redelivered."""
    spec = setup.spec("document.*")
    await setup.broker.declare(spec)
    retried = Message("document.updated", b"part-retried", "p-retry", {"tenantid": "t"})
    dead = Message("document.deleted", b"part-dead", "p-dead", {"tenantid": "t"})
    carrier = Message("batch", b"part-retried\npart-dead", "carrier", content_type="x/batch")
    got: list[tuple[str, str, bytes, int]] = []
    changed = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        message = delivery.message
        got.append((message.routing_key, message.message_id, message.body, delivery.attempt))
        if message.message_id == "carrier":
            await delivery.retry_part(retried, 100, attempt=2)
            await delivery.dead_letter_part(dead, "poison")
        await delivery.ack()
        changed.set()

    consumer = await setup.broker.consume(spec, handler, prefetch=4)
    await setup.broker.publish_to_queue(spec, [carrier], declare=False)
    await _until(lambda: len(got) == 2)
    await asyncio.sleep(0.3)  # room for the carrier to show up again if it were not acked
    await consumer.stop()
    assert got == [
        ("batch", "carrier", b"part-retried\npart-dead", 1),
        ("document.updated", "p-retry", b"part-retried", 2),
    ]
    letters = await setup.broker.dead_letters(spec)
    for _ in range(50):
        if letters:
            break
        await asyncio.sleep(0.05)
        letters = await setup.broker.dead_letters(spec)
    assert [(m.message_id, m.body, m.routing_key) for m in letters] == [
        ("p-dead", b"part-dead", "document.deleted")
    ]
    assert letters[0].headers["x-capstan-death-reason"] == "poison"


async def test_publishing_into_a_missing_queue_undeclared_is_an_error(setup: Setup) -> None:
    spec = setup.spec("document.*")
    with pytest.raises(BrokerUnavailable):
        await setup.broker.publish_to_queue(
            spec, [Message("batch", b"x", uuid.uuid4().hex)], declare=False
        )


async def test_a_mandatory_message_no_queue_takes_is_an_error(setup: Setup) -> None:
    await setup.broker.declare(setup.spec("document.*"))
    with pytest.raises(BrokerUnavailable):
        await setup.publish("task.nobody-binds-this")
    await setup.broker.publish(
        [Message("task.nobody", b"x", uuid.uuid4().hex)], setup.exchange, mandatory=False
    )
