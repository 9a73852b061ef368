"""The SignalBus contract (docs/contracts/signals.md), run against every adapter: per-tenant
delivery in publish order, fire and forget, and a publish that never raises."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from capstan.cache.redis import RedisLink
from capstan.observability.metrics import Metrics
from capstan.signals.memory import MemorySignals
from capstan.signals.port import (
    TASK_PROGRESS,
    MalformedSignal,
    Signal,
    SignalBus,
    SignalStream,
    task_progress,
)
from capstan.signals.redis import RedisSignals
from tests.conftest import RedisProcess

ADAPTERS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
WAIT = 10.0  # a bound on waiting for a signal, never a timing expectation


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture(params=ADAPTERS)
async def bus(request: pytest.FixtureRequest, metrics: Metrics) -> AsyncIterator[SignalBus]:
    if request.param == "memory":
        yield MemorySignals(metrics)
        return
    url = request.getfixturevalue("redis_url")
    link = RedisLink(url)
    yield RedisSignals(link, url, metrics)
    await link.close()


def tenant() -> str:
    return str(uuid.uuid4())


def tick(tenant_id: str, progress: float, task_id: str = "t-1") -> Signal:
    return task_progress(tenant_id, task_id, progress, f"at {progress}", source="capstan-test")


async def received(stream: SignalStream) -> Signal:
    return await asyncio.wait_for(stream.next(), WAIT)


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_subscriber_gets_its_tenants_signals_in_publish_order(bus: SignalBus) -> None:
    a = tenant()
    async with bus.subscribe(a) as stream:
        sent = [tick(a, p) for p in (0.25, 0.5, 0.75)]
        for signal in sent:
            assert await bus.publish(signal)
        got = [await received(stream) for _ in sent]
    assert got == sent  # every field round-trips: id, type, subject, data, time, source
    assert got[0].type == TASK_PROGRESS and got[0].routing_key == "task.progress"
    assert got[0].data == {"id": "t-1", "progress": 0.25, "message": "at 0.25"}


async def test_another_tenants_signals_never_reach_a_subscriber(bus: SignalBus) -> None:
    a, b = tenant(), tenant()
    async with bus.subscribe(a) as stream_a, bus.subscribe(b) as stream_b:
        await bus.publish(tick(b, 0.1, "b's"))
        await bus.publish(tick(a, 0.2, "a's"))
        # Publish order holds across channels: had b's reached a, it would come first.
        first_a = await received(stream_a)
        first_b = await received(stream_b)
    assert (first_a.tenant_id, first_a.data["id"]) == (a, "a's")
    assert (first_b.tenant_id, first_b.data["id"]) == (b, "b's")


async def test_every_subscriber_of_a_tenant_gets_each_signal(bus: SignalBus) -> None:
    a = tenant()
    async with bus.subscribe(a) as one, bus.subscribe(a) as two:
        signal = tick(a, 0.5)
        await bus.publish(signal)
        assert await received(one) == signal
        assert await received(two) == signal


async def test_a_signal_published_before_subscribing_is_gone(bus: SignalBus) -> None:
    a = tenant()
    assert await bus.publish(tick(a, 0.1, "early"))  # nobody listens: sent, and not kept
    async with bus.subscribe(a) as stream:
        await bus.publish(tick(a, 0.2, "late"))
        assert (await received(stream)).data["id"] == "late"


async def test_published_signals_are_counted_by_type(bus: SignalBus, metrics: Metrics) -> None:
    a = tenant()
    await bus.publish(tick(a, 0.1))
    await bus.publish(tick(a, 0.2))
    assert count(metrics, "capstan_signals_published_total", type="task.progress") == 2


def test_the_wire_form_is_an_ephemeral_cloudevent_without_seq() -> None:
    signal = tick("ten-1", 0.5, "task-9")
    wire = json.loads(signal.encode())
    assert wire["specversion"] == "1.0" and wire["type"] == "capstan.task.progress"
    assert wire["ephemeral"] is True and "seq" not in wire
    assert wire["tenantid"] == "ten-1" and wire["subject"] == "tasks/task-9"
    assert wire["data"] == {"id": "task-9", "progress": 0.5, "message": "at 0.5"}
    assert wire["time"].endswith("Z")
    assert Signal.decode(signal.encode()) == signal
    with pytest.raises(MalformedSignal):
        Signal.decode(b'{"type": "capstan.task.progress"}')


@pytest.mark.redis
async def test_with_redis_down_a_publish_is_dropped_and_counted_never_raised(
    redis_process: RedisProcess, metrics: Metrics, tmp_path: Path
) -> None:
    link = RedisLink(redis_process.url, timeout_seconds=0.3, retry_seconds=60)
    bus = RedisSignals(link, redis_process.url, metrics)
    try:
        assert await bus.publish(tick(tenant(), 0.1))
        redis_process.stop()
        assert not await bus.publish(tick(tenant(), 0.2))  # the failing call opens the breaker
        assert not await bus.publish(tick(tenant(), 0.3))  # then dropped without trying
    finally:
        await link.close()
    dropped = count(
        metrics, "capstan_signals_dropped_total", type="task.progress", reason="unavailable"
    )
    assert dropped == 2
    assert count(metrics, "capstan_signals_published_total", type="task.progress") == 1


async def test_an_in_process_subscriber_that_never_reads_loses_signals_not_the_publisher(
    metrics: Metrics,
) -> None:
    from capstan.signals.memory import STREAM_SIZE

    bus = MemorySignals(metrics)
    a = tenant()
    async with bus.subscribe(a) as stream:
        for i in range(STREAM_SIZE + 5):
            assert await bus.publish(tick(a, i / (STREAM_SIZE + 5)))
        assert (await received(stream)).data["progress"] == 0.0  # the oldest are kept
    dropped = count(
        metrics, "capstan_signals_dropped_total", type="task.progress", reason="slow_subscriber"
    )
    assert dropped == 5
