"""A `documents.reindex` task cancelled mid-backfill stops at the next page and leaves the
search index as it was: the half-built index is detached from the write alias and deleted."""

from __future__ import annotations

import pytest

from capstan.search.elasticsearch import ElasticsearchEngine
from capstan.tasks.context import TaskCancelled
from tests.conftest import Stack
from tests.tasks.test_handler_progress import handler, model, recording


async def test_a_cancelled_reindex_drops_its_half_built_index(es_stack: Stack) -> None:
    c = es_stack.container
    assert isinstance(c.search, ElasticsearchEngine)
    tenant = await es_stack.api.tenant()
    async with es_stack.api.client(tenant.key) as http:
        for i in range(3):
            await http.post("/v1/documents", json={"body": f"document {i}"})
    await c.search.ensure()
    before = await c.search.read_index()
    targets = await c.search.write_targets(fresh=True)

    ctx = recording(
        es_stack, tenant.id, cancel_at=lambda calls: any("documents" in (m or "") for _, m in calls)
    )
    with pytest.raises(TaskCancelled):
        await handler(es_stack, "documents.reindex")(model(es_stack, "documents.reindex"), ctx)

    assert ctx.calls[0] == (0.0, "creating the new index")
    assert await c.search.read_index() == before
    assert await c.search.write_targets(fresh=True) == targets
    indices = await c.search.client.indices.get(index=f"{c.search.alias}-*")
    assert sorted(indices.body) == sorted(targets)
