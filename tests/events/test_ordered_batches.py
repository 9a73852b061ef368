"""Ordered subscribers apply the events waiting in their queue in batches (one transaction per
batch, in queue order): every event once and in publish order, a poison event retried and
dead-lettered alone while the rest of its batch commits once, duplicates inside a batch applied
once, and stop() prompt when idle and losing nothing when a batch is in hand.

A SubscriberRunner is built directly, in each mode: embedded (memory broker, SQLite) and
production (RabbitMQ, PostgreSQL). The fake subscriber's effect is a row in a table of its own
with no unique key, written in the runner's session: a row is there only if its transaction
committed, and an effect applied twice shows as two rows."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from capstan.broker.port import Broker, Consumer, Delivery, Handler, Message, QueueSpec
from capstan.db.engine import create_engine, sessionmaker
from capstan.db.fastpath import FastPath
from capstan.db.migrate import upgrade
from capstan.db.schema import AuditEntry, ProcessedEvent
from capstan.events.batch import batch_message
from capstan.events.envelope import Event
from capstan.events.realtime import read_batch
from capstan.events.topology import Topology
from capstan.observability.metrics import Metrics
from capstan.subscribers.audit import AuditSubscriber
from capstan.subscribers.runtime import Outcome, Subscriber, SubscriberRunner
from tests.conftest import embedded_settings, service_url
from tests.events.messages import document_updated

MAX_ATTEMPTS = 3
RETRY_DELAYS_MS = [20, 50]
FAKE = "ordered-fake"
PROMPT = 2.0  # seconds: a bound on "at once", far above the expected milliseconds
GRACE = 5.0  # SubscriberRunner.stop's bound on waiting for the batch in hand
SETTLE = 0.3  # seconds of room for a stray redelivery or duplicate to show up


@dataclass
class Env:
    mode: str  # embedded (memory broker, SQLite) or production (RabbitMQ, PostgreSQL)
    broker: Broker
    topology: Topology
    engine: AsyncEngine
    db: async_sessionmaker[AsyncSession]
    effects: Table
    tenant: str


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("production", marks=[pytest.mark.postgres, pytest.mark.rabbitmq]),
    ]
)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """Memory broker and SQLite, or RabbitMQ and PostgreSQL, under a namespace of their own."""
    suffix = uuid.uuid4().hex[:10]
    topology = Topology(f"t{suffix}")
    broker: Any
    if request.param == "embedded":
        from capstan.broker.memory import MemoryBroker

        url = embedded_settings(tmp_path).database_url
        await upgrade(url)
        broker = MemoryBroker()
    else:
        from capstan.broker.rabbitmq import RabbitBroker

        url = request.getfixturevalue("postgres_url")
        broker = RabbitBroker(service_url("rabbitmq"))
        await broker.connect()
    engine = create_engine(url, pool_size=4)
    effects = Table(
        f"ordered_effects_{suffix}",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),
    )
    async with engine.begin() as conn:
        await conn.run_sync(effects.create)
    try:
        yield Env(
            request.param, broker, topology, engine, sessionmaker(engine), effects, f"t-{suffix}"
        )
    finally:
        await broker.close()
        async with engine.begin() as conn:
            await conn.run_sync(effects.drop)
        await engine.dispose()
        if request.param == "production":
            await _delete_topology(service_url("rabbitmq"), topology)


async def _delete_topology(url: str, topology: Topology) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in (FAKE, AuditSubscriber.name):
            queue = topology.subscriber_queue(name)
            tiers = [f"{queue}.retry.{t}" for t in RETRY_DELAYS_MS]
            for q in [queue, f"{queue}.dead", *tiers]:
                with contextlib.suppress(Exception):
                    await channel.queue_delete(q)
        probe = _probe_spec(topology)
        for q in [probe.name, probe.dead_letter_queue, *(f"{probe.name}.retry.20",)]:
            with contextlib.suppress(Exception):
                await channel.queue_delete(q)
        for exchange in (topology.events_exchange, topology.realtime_exchange):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)


class Recorder:
    """An ordered subscriber that writes one effect row per event in the runner's session and
    records each call with its session (one session per transaction, so per batch)."""

    name: ClassVar[str] = FAKE
    patterns: ClassVar[tuple[str, ...]] = ("document.*",)
    ordered: ClassVar[bool] = True

    def __init__(
        self,
        effects: Table,
        *,
        poison: str | None = None,
        poison_kind: str = "handler error",
        delay: float = 0.0,
        held: str | None = None,
    ) -> None:
        self.effects = effects
        self.poison = poison
        self.poison_kind = poison_kind
        self.delay = delay
        self.held = held  # handled only once `release` is set
        self.release = asyncio.Event()
        self.calls: list[tuple[str, AsyncSession]] = []

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        self.calls.append((event.id, session))
        if self.delay:
            await asyncio.sleep(self.delay)
        if event.id == self.held:
            await self.release.wait()
        if event.id == self.poison:
            if self.poison_kind == "handler error":
                raise RuntimeError(f"cannot apply {event.id}")
            # A statement the database refuses (NOT NULL): the transaction is spoiled.
            await session.execute(insert(self.effects).values(event_id=None))
        await session.execute(insert(self.effects).values(event_id=event.id))
        return None

    @property
    def handled(self) -> list[str]:
        return [event_id for event_id, _ in self.calls]

    @property
    def in_hand(self) -> bool:
        return bool(self.calls)

    def batches(self) -> list[list[str]]:
        """The calls grouped by transaction, in call order."""
        groups: list[tuple[AsyncSession, list[str]]] = []
        for event_id, session in self.calls:
            if groups and groups[-1][0] is session:
                groups[-1][1].append(event_id)
            else:
                groups.append((session, [event_id]))
        return [ids for _, ids in groups]

    def batch_of(self, event_id: str) -> AsyncSession:
        """The session of the last call for `event_id`."""
        return next(s for e, s in reversed(self.calls) if e == event_id)


def _events(n: int, tenant: str) -> list[Message]:
    return [document_updated(tenant, f"d{i}", i + 1) for i in range(n)]


class Handovers:
    """A broker that counts the deliveries it has handed to its consumers' handlers."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self.count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    async def consume(self, spec: QueueSpec, handler: Handler, *, prefetch: int) -> Consumer:
        async def counted(delivery: Delivery) -> None:
            self.count += 1
            await handler(delivery)

        return await self._broker.consume(spec, counted, prefetch=prefetch)


async def _one_waiting_batch(
    env: Env, fake: Recorder | Versioned, queued: list[Message]
) -> tuple[SubscriberRunner, Metrics]:
    """Start an ordered runner and have `queued` wait in it as one batch: a lead event is
    handled first and held there until the broker has handed every queued message to the
    runner. The runner is started; stop it."""
    lead = _events(1, env.tenant)[0]
    fake.held = lead.message_id
    broker = Handovers(env.broker)
    metrics = Metrics()
    runner = _runner(fake, replace(env, broker=broker), metrics)
    await runner.start()
    try:
        await _publish(env, [lead])
        await _wait(lambda: _true(fake.in_hand), "the lead event in hand")
        await _publish(env, queued)
        await _wait(lambda: _true(broker.count == 1 + len(queued)), "all handed to the runner")
    except BaseException:
        fake.release.set()
        await runner.stop()
        raise
    fake.release.set()
    return runner, metrics


def _runner(
    subscriber: Subscriber, env: Env, metrics: Metrics, *, ordered_batch: int = 64
) -> SubscriberRunner:
    return SubscriberRunner(
        subscriber,
        env.broker,
        env.db,
        metrics,
        prefetch=1,
        ordered_batch=ordered_batch,
        max_attempts=MAX_ATTEMPTS,
        retry_delays_ms=RETRY_DELAYS_MS,
        topology=env.topology,
    )


async def _publish(env: Env, messages: list[Message]) -> None:
    """One message at a time, each confirmed before the next: the queue holds them in this
    order."""
    for message in messages:
        await env.broker.publish([message], env.topology.events_exchange)


async def _effects(env: Env) -> list[str]:
    """The event ids of the committed effect rows, in the order they were written."""
    async with env.db() as session:
        rows = await session.execute(select(env.effects.c.event_id).order_by(env.effects.c.id))
        return list(rows.scalars())


async def _wait(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _has(env: Env, n: int) -> bool:
    return len(await _effects(env)) >= n


async def _applied(env: Env, n: int) -> None:
    await _wait(lambda: _has(env, n), f"{n} effects")


async def _true(value: bool) -> bool:
    return value


def _consumed(metrics: Metrics, outcome: str, subscriber: str = FAKE) -> float:
    value = metrics.registry.get_sample_value(
        "capstan_events_consumed_total", {"subscriber": subscriber, "outcome": outcome}
    )
    return value or 0.0


def _batch_metric(metrics: Metrics, sample: str, subscriber: str = FAKE) -> float:
    value = metrics.registry.get_sample_value(
        f"capstan_subscriber_batch_events_{sample}", {"subscriber": subscriber}
    )
    return value or 0.0


async def test_waiting_events_are_applied_once_each_in_publish_order_in_batches(
    env: Env,
) -> None:
    sent = _events(200, env.tenant)
    ids = [m.message_id for m in sent]
    fake = Recorder(env.effects)
    metrics = Metrics()
    runner = _runner(fake, env, metrics, ordered_batch=16)
    await env.broker.declare(runner.spec)
    await _publish(env, sent)  # all waiting before the runner starts
    await runner.start()
    try:
        await _applied(env, len(ids))
        await asyncio.sleep(SETTLE)
    finally:
        await runner.stop()

    assert await _effects(env) == ids  # committed once each, in publish order
    assert fake.handled == ids  # no batch was rolled back and replayed
    batches = fake.batches()
    sizes = [len(b) for b in batches]
    assert [e for b in batches for e in b] == ids  # each batch a run of consecutive events
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 16, sizes  # CAPSTAN_SUBSCRIBER_ORDERED_BATCH caps a batch
    # The histogram counts the transactions of 2 or more events.
    multi = [s for s in sizes if s > 1]
    assert _batch_metric(metrics, "count") == len(multi)
    assert _batch_metric(metrics, "sum") == sum(multi)
    assert _consumed(metrics, "processed") == len(ids)
    assert _consumed(metrics, "duplicate") == 0
    assert _consumed(metrics, "retried") == 0
    assert await env.broker.dead_letters(runner.spec) == []


class Versioned:
    """An unordered, batched subscriber whose effect is idempotent by itself (the embedder with
    embeddings off, the indexer): it offers `apply_idempotent`; `handle` (a transaction and a
    processed_events row) should never be needed. It holds the `held` event until `release`."""

    name: ClassVar[str] = FAKE
    patterns: ClassVar[tuple[str, ...]] = ("document.*",)
    ordered: ClassVar[bool] = False
    batched: ClassVar[bool] = True

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.in_transaction: list[str] = []
        self.held: str | None = None
        self.release = asyncio.Event()
        self.apply_idempotent = self._apply

    @property
    def in_hand(self) -> bool:
        return bool(self.applied)

    async def _apply(self, event: Event) -> Outcome | None:
        self.applied.append(event.id)
        if event.id == self.held:
            await self.release.wait()
        return None

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        self.in_transaction.append(event.id)
        raise RuntimeError("an idempotent subscriber's events need no transaction")


async def test_a_waiting_batch_of_an_idempotent_subscriber_takes_no_transaction(
    env: Env,
) -> None:
    queued = _events(20, env.tenant)
    fake = Versioned()
    runner, metrics = await _one_waiting_batch(env, fake, queued)
    try:
        await _wait(lambda: _true(len(fake.applied) >= 1 + len(queued)), "every event applied")
        await asyncio.sleep(SETTLE)
    finally:
        await runner.stop()
    assert sorted(fake.applied[1:]) == sorted(m.message_id for m in queued)
    assert fake.in_transaction == []
    assert _batch_metric(metrics, "count") == 1 and _batch_metric(metrics, "sum") == len(queued)
    async with env.db() as session:
        kept = await session.scalar(
            select(func.count())
            .select_from(ProcessedEvent)
            .where(ProcessedEvent.event_id.in_(fake.applied))
        )
    assert kept == 0
    assert await env.broker.dead_letters(runner.spec) == []


async def test_an_idle_runner_applies_a_lone_event_at_once(env: Env) -> None:
    fake = Recorder(env.effects)
    metrics = Metrics()
    runner = _runner(fake, env, metrics)
    await runner.start()
    try:
        await asyncio.sleep(0.1)  # idle: the drain loop waits on an empty intake
        for expected, sent in enumerate(_events(2, env.tenant), start=1):
            started = time.monotonic()
            await _publish(env, [sent])
            await _wait(lambda n=expected: _has(env, n), "the lone event", timeout=PROMPT)
            assert time.monotonic() - started < PROMPT
    finally:
        await runner.stop()

    assert [len(b) for b in fake.batches()] == [1, 1]  # nothing waited for a batch to fill
    assert _batch_metric(metrics, "count") == 0
    assert _consumed(metrics, "processed") == 2


@pytest.mark.parametrize("poison_kind", ["handler error", "statement refused"])
async def test_a_poison_event_in_a_waiting_batch_is_dead_lettered_alone_and_the_rest_apply_once(
    env: Env, poison_kind: str
) -> None:
    sent = _events(30, env.tenant)
    ids = [m.message_id for m in sent]
    poison = ids[12]
    fake = Recorder(env.effects, poison=poison, poison_kind=poison_kind)
    runner, metrics = await _one_waiting_batch(env, fake, sent)

    async def settled() -> bool:
        dead = await env.broker.dead_letters(runner.spec)
        return bool(dead) and await _has(env, 1 + len(ids) - 1)  # the lead, all but the poison

    try:
        await _wait(settled, "the poison dead-lettered and the rest applied")
        await asyncio.sleep(SETTLE)
    finally:
        await runner.stop()

    lead, *applied = await _effects(env)
    rest = [i for i in ids if i != poison]
    assert Counter(applied) == Counter(rest)  # the rest once each, none of the poison
    assert applied == rest  # and in publish order
    dead = await env.broker.dead_letters(runner.spec)
    assert [m.message_id for m in dead] == [poison]
    batches = fake.batches()
    assert batches[0] == [lead]
    # The 30 were tried in one transaction, which stopped at the poison and was rolled back,
    # then replayed one by one: the events before the poison were handled twice, committed
    # once; the poison had its attempts alone.
    assert batches[1] == ids[:13]
    assert batches[2:] == [[i] for i in ids] + [[poison]] * (MAX_ATTEMPTS - 1)
    async with env.db() as session:
        recorded = await session.scalar(
            select(func.count())
            .select_from(ProcessedEvent)
            .where(ProcessedEvent.subscriber == FAKE, ProcessedEvent.event_id == poison)
        )
    assert recorded == 0  # not marked processed by the rolled-back batch
    assert _consumed(metrics, "processed") == 1 + len(rest)
    assert _consumed(metrics, "duplicate") == 0
    assert _consumed(metrics, "retried") == MAX_ATTEMPTS - 1
    assert _consumed(metrics, "dead_lettered") == 1
    assert _batch_metric(metrics, "count") == 0  # the one batch of 2 or more did not commit


async def test_an_event_delivered_twice_within_a_batch_is_applied_once(env: Env) -> None:
    sent = _events(20, env.tenant)
    ids = [m.message_id for m in sent]
    # m5 twice in a row, and m2 again between m9 and m10.
    queued = [*sent[:6], sent[5], *sent[6:10], sent[2], *sent[10:]]
    fake = Recorder(env.effects)
    runner, metrics = await _one_waiting_batch(env, fake, queued)

    async def all_settled() -> bool:
        return _consumed(metrics, "processed") + _consumed(metrics, "duplicate") >= 1 + len(queued)

    try:
        await _wait(all_settled, "every copy settled")
        await asyncio.sleep(SETTLE)
    finally:
        await runner.stop()

    lead, *applied = await _effects(env)
    assert applied == ids  # once each, in order
    # All 22 copies in one transaction; the second copies never reached the handler.
    assert fake.batches() == [[lead], ids]
    assert _batch_metric(metrics, "count") == 1
    assert _batch_metric(metrics, "sum") == len(queued)
    assert _consumed(metrics, "processed") == 1 + len(ids)
    assert _consumed(metrics, "duplicate") == 2
    assert await env.broker.dead_letters(runner.spec) == []


async def test_stop_while_idle_returns_at_once(env: Env) -> None:
    fake = Recorder(env.effects)
    runner = _runner(fake, env, Metrics())
    await runner.start()
    stopped = False
    try:
        await _publish(env, _events(1, env.tenant))
        await _wait(lambda: _has(env, 1), "the event")
        await asyncio.sleep(0.1)  # idle again
        started = time.monotonic()
        await runner.stop()
        stopped = True
        assert time.monotonic() - started < PROMPT  # not the batch grace (5 s)
    finally:
        if not stopped:
            await runner.stop()


async def test_stop_during_a_batch_lets_it_commit_and_loses_nothing(
    env: Env, request: pytest.FixtureRequest
) -> None:
    sent = _events(100, env.tenant)
    ids = [m.message_id for m in sent]
    slow = Recorder(env.effects, delay=0.02)  # a batch of 16 takes ~0.3 s
    runner = _runner(slow, env, Metrics(), ordered_batch=16)
    await env.broker.declare(runner.spec)
    await _publish(env, sent)
    await runner.start()
    stopped = False
    try:
        await _wait(lambda: _true(bool(slow.calls)), "a batch in hand")
        started = time.monotonic()
        await runner.stop()
        stopped = True
        assert time.monotonic() - started < GRACE  # the batch in hand finished
    finally:
        if not stopped:
            await runner.stop()

    before = await _effects(env)
    assert 0 < len(before) < len(ids)
    assert before == ids[: len(before)]  # in order, no gap
    assert before == slow.handled  # what the handler saw was committed: no batch cut short

    fake = Recorder(env.effects)
    metrics = Metrics()
    restarted = _runner(fake, env, metrics, ordered_batch=16)
    await restarted.start()
    try:
        await _applied(env, len(ids))
        await asyncio.sleep(SETTLE)
    finally:
        await restarted.stop()

    effects = await _effects(env)
    assert Counter(effects) == Counter(ids)  # every event exactly once
    assert _consumed(metrics, "duplicate") == 0  # the batch in hand was acked before stopping
    assert await env.broker.dead_letters(restarted.spec) == []
    assert effects == ids  # still in publish order across the restart


def _probe_spec(topology: Topology) -> QueueSpec:
    return QueueSpec(
        name=f"{topology.namespace}.probe",
        exchange=topology.realtime_exchange,
        patterns=("#",),
        retry_delays_ms=(20,),
    )


def _fast(env: Env) -> FastPath | None:
    """The audit's one-statement batch path, as `capstan subscriber` builds it on PostgreSQL."""
    if env.mode != "production":
        return None
    return FastPath(env.engine.url.render_as_string(hide_password=False), max_size=2)


async def test_audit_seq_follows_publish_order_and_realtime_follows_seq(env: Env) -> None:
    sent = _events(150, env.tenant)
    ids = [m.message_id for m in sent]
    metrics = Metrics()
    fast = _fast(env)
    runner = _runner(AuditSubscriber(env.topology.realtime_exchange, fast), env, metrics)
    await env.broker.declare(runner.spec)
    realtime: list[Message] = []

    async def collect(delivery: Delivery) -> None:
        realtime.append(delivery.message)
        await delivery.ack()

    probe = await env.broker.consume(_probe_spec(env.topology), collect, prefetch=1)
    await _publish(env, sent)
    await runner.start()

    async def audited() -> bool:
        return sum(len(read_batch(m)) for m in realtime) >= len(ids)

    try:
        await _wait(audited, "every event audited and fanned out")
        await asyncio.sleep(SETTLE)
    finally:
        await runner.stop()
        await probe.stop()
        if fast is not None:
            await fast.close()

    async with env.db() as session:
        rows = (
            await session.execute(
                select(AuditEntry.seq, AuditEntry.event_id)
                .where(AuditEntry.tenant_id == env.tenant)
                .order_by(AuditEntry.seq)
            )
        ).all()
    assert [event_id for _, event_id in rows] == ids  # seq order is publish order
    seqs = [seq for seq, _ in rows]
    fanned_out = [envelope for m in realtime for envelope in read_batch(m)]
    assert [e["id"] for e in fanned_out] == ids  # follow-ups in order, once each
    assert [e["seq"] for e in fanned_out] == seqs
    assert [m.headers["seq"] for m in realtime] == sorted({m.headers["seq"] for m in realtime})
    if fast is not None:
        # The events were waiting, so they were audited in batches: one message per batch.
        assert len(realtime) < len(ids) / 10
    assert _batch_metric(metrics, "count", AuditSubscriber.name) >= 1
    assert _consumed(metrics, "processed", AuditSubscriber.name) == len(ids)


async def test_stop_sends_the_follow_ups_of_every_committed_batch(env: Env) -> None:
    """Follow-ups go out from their own task while the next batch is applied; stopping right
    after the last commit still publishes every one of them, in order."""
    sent = _events(120, env.tenant)
    ids = [m.message_id for m in sent]
    fast = _fast(env)
    runner = _runner(AuditSubscriber(env.topology.realtime_exchange, fast), env, Metrics())
    await env.broker.declare(runner.spec)
    realtime: list[str] = []

    async def collect(delivery: Delivery) -> None:
        realtime.extend(str(e["id"]) for e in read_batch(delivery.message))
        await delivery.ack()

    probe = await env.broker.consume(_probe_spec(env.topology), collect, prefetch=50)
    await _publish(env, sent)
    await runner.start()

    async def committed() -> bool:
        async with env.db() as session:
            n = await session.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.tenant_id == env.tenant)
            )
        return n == len(ids)

    try:
        await _wait(committed, "every event audited")
        await runner.stop()  # at once: some follow-ups may still be queued
        await _wait(lambda: _true(len(realtime) >= len(ids)), "every follow-up published")
    finally:
        await runner.stop()
        await probe.stop()
        if fast is not None:
            await fast.close()
    assert realtime == ids


class Unordered(Recorder):
    """The same effect, through the runner's one-message-at-a-time path."""

    ordered: ClassVar[bool] = False


def _carrier(parts: list[tuple[str, bytes]]) -> Message:
    """What the relay sends a subscriber for one of its batches (capstan.events.batch)."""
    return batch_message(parts)


async def test_relay_batch_messages_are_applied_in_order_and_acked_once_applied(
    env: Env,
) -> None:
    sent = _events(30, env.tenant)
    ids = [m.message_id for m in sent]
    fake = Recorder(env.effects)
    metrics = Metrics()
    runner = _runner(fake, env, metrics, ordered_batch=8)
    await runner.start()
    try:
        await env.broker.publish_to_queue(
            runner.spec,
            [_carrier([(m.message_id, m.body) for m in part]) for part in (sent[:20], sent[20:])],
        )
        await _applied(env, len(ids))
        await asyncio.sleep(SETTLE)
    finally:
        await runner.stop()
    assert await _effects(env) == ids  # once each, in order
    assert max(len(b) for b in fake.batches()) <= 8  # a transaction takes ordered_batch at most
    assert await env.broker.queue_depth(runner.spec.name) == 0  # both messages acked
    assert _consumed(metrics, "processed") == len(ids)


@pytest.mark.parametrize("subscriber", [Recorder, Unordered])
async def test_a_poison_event_and_a_malformed_line_in_a_relay_batch_are_dead_lettered_alone(
    env: Env, subscriber: type[Recorder]
) -> None:
    sent = _events(10, env.tenant)
    ids = [m.message_id for m in sent]
    poison = ids[4]
    fake = subscriber(env.effects, poison=poison)
    metrics = Metrics()
    runner = _runner(fake, env, metrics)
    parts = [(m.message_id, m.body) for m in sent]
    carrier = _carrier([*parts[:7], ("garbage", b"{not json"), *parts[7:]])

    async def settled() -> bool:
        dead = await env.broker.dead_letters(runner.spec)
        return len(dead) == 2 and await _has(env, len(ids) - 1)

    await runner.start()
    try:
        await env.broker.publish_to_queue(runner.spec, [carrier])
        await _wait(settled, "the poison and the garbage dead-lettered, the rest applied")
        await asyncio.sleep(SETTLE)
    finally:
        await runner.stop()
    assert await _effects(env) == [i for i in ids if i != poison]
    dead = {m.body: m for m in await env.broker.dead_letters(runner.spec)}
    assert set(dead) == {sent[4].body, b"{not json"}
    assert dead[sent[4].body].message_id == poison  # sent alone, as a one-event message
    assert dead[sent[4].body].routing_key == "document.updated"
    assert dead[b"{not json"].headers["x-capstan-death-reason"].startswith("malformed")
    assert await env.broker.queue_depth(runner.spec.name) == 0  # the carrier was acked
    assert _consumed(metrics, "processed") == len(ids) - 1
    assert _consumed(metrics, "retried") == MAX_ATTEMPTS - 1
    assert _consumed(metrics, "dead_lettered") == 2
