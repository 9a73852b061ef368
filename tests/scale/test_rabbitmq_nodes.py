"""RabbitMQ: a broker URL listing several nodes (the connection moves to a live one when its
node dies) and quorum queues (CAPSTAN_BROKER_QUEUE_TYPE=quorum)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from capstan.broker.management import management_client, management_url
from capstan.broker.port import BrokerUnavailable, Delivery, Message, QueueSpec
from capstan.broker.rabbitmq import QueueType, RabbitBroker
from capstan.node_urls import node_urls
from tests.conftest import delete_namespace, free_port, service_url
from tests.servers import RabbitNode, started


def test_a_broker_url_lists_nodes_as_urls_or_as_hosts() -> None:
    hosts = node_urls("amqp://u:p@r1:5672,r2:5672,r3/capstan")
    urls = node_urls("amqp://u:p@r1:5672/capstan, amqp://u:p@r2:5672/capstan,amqp://u:p@r3/capstan")
    assert (
        hosts
        == urls
        == [
            "amqp://u:p@r1:5672/capstan",
            "amqp://u:p@r2:5672/capstan",
            "amqp://u:p@r3/capstan",
        ]
    )
    assert node_urls("amqp://u:p@r1:5672/") == ["amqp://u:p@r1:5672/"]
    with pytest.raises(ValueError):
        node_urls("amqp://u:p@/capstan")


class Inbox:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.bodies.append(delivery.message.body)
        await delivery.ack()


async def until(condition: object, what: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def publish_when_connected(broker: RabbitBroker, spec: QueueSpec, body: bytes) -> None:
    """Publish with confirms, retrying while the connection moves (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        try:
            await broker.publish_to_queue(spec, [Message("t.x", body, uuid.uuid4().hex)])
            return
        except BrokerUnavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.fixture
def namespace() -> Iterator[str]:
    yield f"tn{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def shared(namespace: str) -> AsyncIterator[str]:
    url = service_url("rabbitmq")
    yield url
    await delete_namespace(url, namespace)


def spec_in(namespace: str) -> QueueSpec:
    return QueueSpec(
        name=f"{namespace}.q",
        patterns=("t.#",),
        retry_delays_ms=(100,),
        exchange=f"{namespace}.events",
        max_priority=9,
    )


@pytest.mark.rabbitmq
async def test_an_unreachable_first_node_is_passed_over(shared: str, namespace: str) -> None:
    dead = f"amqp://capstan:capstan@127.0.0.1:{free_port()}/"
    broker = RabbitBroker(f"{dead},{shared}", connect_timeout=1)
    inbox = Inbox()
    try:
        await broker.connect()
        spec = spec_in(namespace)
        consumer = await broker.consume(spec, inbox, prefetch=1)
        await publish_when_connected(broker, spec, b"one")
        await until(lambda: inbox.bodies == [b"one"], "the message")
        await consumer.stop()
    finally:
        await broker.close()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_every_durable_queue_has_the_configured_type(
    shared: str, namespace: str, queue_type: QueueType
) -> None:
    broker = RabbitBroker(shared, queue_type=queue_type)
    spec = spec_in(namespace)
    try:
        await broker.declare(spec)
    finally:
        await broker.close()
    async with management_client(management_url(shared), timeout=10) as api:
        queues = (
            await api.get("/api/queues/%2F", params={"columns": "name,type,arguments"})
        ).json()
    mine = {q["name"]: q for q in queues if q["name"].startswith(namespace + ".")}
    assert set(mine) == {f"{namespace}.q", f"{namespace}.q.retry.100", f"{namespace}.q.dead"}
    assert {q["type"] for q in mine.values()} == {queue_type}
    # Quorum queues have no priorities before RabbitMQ 4.0: the argument is left out.
    main_args = mine[f"{namespace}.q"]["arguments"]
    assert ("x-max-priority" in main_args) == (queue_type == "classic")


@pytest.mark.rabbitmq
async def test_the_connection_moves_to_the_next_node_when_its_node_dies(
    shared: str, namespace: str
) -> None:
    node = started(RabbitNode)
    broker = RabbitBroker(f"{node.url},{shared}", connect_timeout=2)
    inbox = Inbox()
    try:
        # Given a consumer connected through the first node
        await broker.connect()
        spec = spec_in(namespace)
        await broker.consume(spec, inbox, prefetch=1)
        await publish_when_connected(broker, spec, b"before")
        await until(lambda: inbox.bodies == [b"before"], "the first message")
        # When that node is killed
        node.kill()
        # Then publishing and consuming continue on the next node, with no restart
        await publish_when_connected(broker, spec, b"after")
        await until(lambda: inbox.bodies == [b"before", b"after"], "the message after the kill")
    finally:
        await broker.close()
        node.stop()


@pytest.mark.postgres
@pytest.mark.redis
async def test_the_roles_and_the_gateway_move_to_the_next_node(
    shared: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from tests.conftest import stack_settings, start_stack
    from tests.gateway.conftest import SseClient, start_gateway, stop_gateway

    node = started(RabbitNode)
    settings = stack_settings("production", request, tmp_path).model_copy(
        update={"broker_url": f"{node.url},{shared}"}
    )
    stack = await start_stack(settings, ["audit"], worker=False)
    gateway = await start_gateway(stack, tmp_path / "gateway.log")
    try:
        tenant = await stack.api.tenant()
        headers = {"Authorization": f"Bearer {tenant.key}"}
        async with (
            stack.api.client(tenant.key) as api,
            httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as http,
            http.stream(
                "GET", gateway.url + "/v1/stream", params={"types": "document.*"}, headers=headers
            ) as response,
        ):
            stream = SseClient(response)
            assert (await stream.next())["event"] == "ready"
            # Given realtime events flowing relay -> audit -> gateway through the first node
            first = (await api.post("/v1/documents", json={"body": "before"})).json()
            assert (await stream.event())["subject"] == f"documents/{first['id']}"
            # When that node is killed
            node.kill()
            # Then the relay, the audit subscriber and the gateway carry on through the next
            after = (await api.post("/v1/documents", json={"body": "after"})).json()
            seen: list[str] = []
            while f"documents/{after['id']}" not in seen:
                seen.append((await stream.event(timeout=90))["subject"])
    finally:
        await stop_gateway(gateway)
        # Not stop_stack: its namespace clean-up starts from the dead first node.
        await stack.background.stop()
        await stack.container.close()
        await delete_namespace(shared, settings.broker_namespace)
        node.stop()
