"""Broker and search ports: every adapter connects, answers ping, reports an unreachable server
as unavailable (never hangs), and closes cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from capstan.broker.port import Broker, BrokerUnavailable
from capstan.db.engine import create_engine
from capstan.search.port import SearchEngine, SearchUnavailable
from tests.conftest import free_port


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "memory":
        from capstan.broker.memory import MemoryBroker

        adapter: Broker = MemoryBroker()
    else:
        from capstan.broker.rabbitmq import RabbitBroker

        adapter = RabbitBroker(request.getfixturevalue("amqp_url"))
    await adapter.connect()
    yield adapter
    await adapter.close()


@pytest.fixture
def amqp_url() -> str:
    from tests.conftest import service_url

    return service_url("rabbitmq")


async def test_a_broker_answers_ping_once_connected(broker: Broker) -> None:
    for _ in range(100):
        try:
            await broker.ping()
            return
        except BrokerUnavailable:
            import asyncio

            await asyncio.sleep(0.05)
    raise AssertionError("the broker never became reachable")


async def test_an_unreachable_rabbitmq_is_reported_not_raised_at_connect() -> None:
    from capstan.broker.rabbitmq import RabbitBroker

    broker = RabbitBroker(f"amqp://guest:guest@127.0.0.1:{free_port()}/", connect_timeout=0.5)
    await broker.connect()  # starts trying in the background
    with pytest.raises(BrokerUnavailable):
        await broker.ping()
    await broker.close()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("elasticsearch", marks=pytest.mark.elasticsearch),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def search(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SearchEngine]:
    from tests.conftest import service_url

    engine = None
    adapter: SearchEngine
    if request.param == "sqlite":
        from capstan.search.sqlite_fts import SqliteFts

        engine = create_engine(f"sqlite:///{tmp_path / 'fts.db'}")
        adapter = SqliteFts(engine)
    elif request.param == "postgres":
        from capstan.search.postgres_fts import PostgresFts

        engine = create_engine(service_url("postgres"), pool_size=1)
        adapter = PostgresFts(engine)
    else:
        from capstan.search.elasticsearch import ElasticsearchEngine

        adapter = ElasticsearchEngine(service_url("elasticsearch"))
    yield adapter
    await adapter.close()
    if engine is not None:
        await engine.dispose()


async def test_a_search_engine_answers_ping(search: SearchEngine) -> None:
    await search.ping()
    assert search.name


async def test_an_unreachable_elasticsearch_is_unavailable() -> None:
    from capstan.search.elasticsearch import ElasticsearchEngine

    engine = ElasticsearchEngine(f"http://127.0.0.1:{free_port()}", timeout_seconds=0.5)
    with pytest.raises(SearchUnavailable):
        await engine.ping()
    await engine.close()
