"""CAPSTAN_SEARCH_URL listing several Elasticsearch nodes: a node that cannot be reached
costs no failed request while another answers."""

from __future__ import annotations

import uuid

import pytest

from capstan.search.elasticsearch import ElasticsearchEngine
from tests.conftest import free_port, service_url


@pytest.mark.elasticsearch
async def test_requests_go_on_to_a_live_node_when_one_is_down() -> None:
    live = service_url("elasticsearch")
    dead = f"http://127.0.0.1:{free_port()}"
    engine = ElasticsearchEngine(f"{dead},{live}", alias=f"test-{uuid.uuid4().hex[:10]}")
    try:
        # Round robin reaches the dead node within the first two requests.
        for _ in range(4):
            await engine.ping()
        assert {n.base_url for n in engine.client.transport.node_pool.all()} == {dead, live}
    finally:
        await engine.close()


async def test_a_host_list_names_every_node_with_the_credentials() -> None:
    engine = ElasticsearchEngine("http://elastic:pw@es1:9200,es2:9200,es3:9200")
    nodes = engine.client.transport.node_pool.all()
    assert sorted(n.host for n in nodes) == ["es1", "es2", "es3"]
    assert all(n.config.headers.get("authorization", "").startswith("Basic ") for n in nodes)
    await engine.close()
