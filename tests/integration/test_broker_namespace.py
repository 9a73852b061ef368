"""Removing a broker namespace from a real RabbitMQ: everything under `<ns>.` goes, with its
messages; a namespace that merely starts with the same letters stays."""

from __future__ import annotations

import uuid

import pytest
from typer.testing import CliRunner

from capstan.broker.namespaces import list_namespace, remove_namespace
from capstan.broker.port import Message, QueueSpec
from capstan.broker.rabbitmq import RabbitBroker
from capstan.cli.main import app
from tests.conftest import service_url

pytestmark = pytest.mark.rabbitmq


async def declare(url: str, namespace: str, queues: int) -> None:
    """A namespace as Capstan lays it out: queues with retry tiers and dead letters, bound to
    the namespace's exchange, holding a message each."""
    broker = RabbitBroker(url)
    await broker.connect()
    try:
        exchange = f"{namespace}.events"
        for i in range(queues):
            spec = QueueSpec(
                name=f"{namespace}.sub.q{i}",
                patterns=("#",),
                retry_delays_ms=(100, 300),
                exchange=exchange,
            )
            await broker.declare(spec)
        await broker.publish([Message("doc.created", b"{}", uuid.uuid4().hex)], exchange=exchange)
    finally:
        await broker.close()


async def test_removes_every_name_of_the_namespace_and_nothing_else() -> None:
    url = service_url("rabbitmq")
    namespace = f"ns{uuid.uuid4().hex[:8]}"
    sibling = namespace + "x"  # same leading letters, another namespace
    await declare(url, namespace, 2)
    await declare(url, sibling, 1)
    try:
        before = await list_namespace(url, namespace)
        # 2 queues, each with (main, dead letters, 2 retry tiers), and the exchange.
        assert len(before.queues) == 8, before
        assert f"{namespace}.events" in before.exchanges

        assert await remove_namespace(url, namespace) == []

        assert (await list_namespace(url, namespace)).all() == []
        assert len((await list_namespace(url, sibling)).queues) == 4
    finally:
        await remove_namespace(url, sibling)
    assert (await list_namespace(url, sibling)).all() == []


async def test_refuses_an_empty_namespace() -> None:
    with pytest.raises(ValueError, match="every name"):
        await remove_namespace(service_url("rabbitmq"), "")


def test_cli_removes_a_namespace_and_says_when_there_is_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    url = service_url("rabbitmq")
    namespace = f"ns{uuid.uuid4().hex[:8]}"
    asyncio.run(declare(url, namespace, 1))
    monkeypatch.setenv("CAPSTAN_BROKER_URL", url)
    runner = CliRunner()

    refused = runner.invoke(app, ["broker", "remove-namespace", namespace], input="n\n")
    assert refused.exit_code == 1
    assert len(asyncio.run(list_namespace(url, namespace)).queues) == 4

    done = runner.invoke(app, ["broker", "remove-namespace", namespace, "--yes"])
    assert done.exit_code == 0, done.output
    assert "4 queue(s), 1 exchange(s)" in done.output
    assert asyncio.run(list_namespace(url, namespace)).all() == []

    again = runner.invoke(app, ["broker", "remove-namespace", namespace, "--yes"])
    assert again.exit_code == 0
    assert "nothing named" in again.output


def test_cli_needs_a_rabbitmq_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_BROKER_URL", "memory://")
    result = CliRunner().invoke(app, ["broker", "remove-namespace", "anything", "--yes"])
    assert result.exit_code == 2
    assert "not a RabbitMQ" in result.output
