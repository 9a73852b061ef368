"""A model change re-embeds every document into a new space while the old one stays live,
then switches; embedded, and production on a database of its own (the spaces table is
deployment-wide: the run's shared test database must keep one model for every other test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from capstan.embeddings.reconcile import rebuild
from capstan.embeddings.static import StaticEmbedder
from tests.conftest import _admin_sql, service_url, stop_stack
from tests.embeddings.server import EmbeddingsServer
from tests.search.conftest import PRODUCTION, close_stack, open_stack
from tests.search.test_semantic import DOCS, EMBEDDINGS, PARAPHRASES, create, embedded, search


@pytest.fixture
def endpoint() -> Iterator[EmbeddingsServer]:
    """A real OpenAI-compatible server (the offline model behind HTTP) on loopback."""
    server = EmbeddingsServer(StaticEmbedder.load())
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", PRODUCTION])
async def own(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(mode, settings overrides): production gets a database and an index name of its own."""
    if request.param == "embedded":
        yield "embedded", {}
        return
    base = service_url("postgres")
    name = f"capstan_spaces_{uuid.uuid4().hex[:8]}"
    await _admin_sql(base, f'CREATE DATABASE "{name}"')
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        yield "production", {"database_url": url, "search_index": f"test-{name[-8:]}"}
    finally:
        await _admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_model_change_rebuilds_then_switches_the_live_space(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    endpoint: EmbeddingsServer,
    own: tuple[str, dict[str, Any]],
) -> None:
    mode, overrides = own
    model = {
        **EMBEDDINGS,
        **overrides,
        "embeddings_url": endpoint.url,
        "embeddings_model": "test-model",
        "embeddings_dimension": 256,
    }
    # Given documents embedded with version 1 of a model
    first = await open_stack(mode, request, tmp_path, **model, embeddings_version="1")
    try:
        tenant = await first.api.tenant()
        async with first.api.client(tenant.key) as client:
            ids = {k: (await create(client, *v))["id"] for k, v in DOCS.items()}
            await embedded(first, tenant.id, dict.fromkeys(ids.values(), 1))
            assert (await search(client, q=PARAPHRASES["tomato"]))["mode"] == "hybrid"
    finally:
        await stop_stack(first)  # the indices stay for the restart (close_stack drops them)

    # When the processes restart with version 2 of the model
    second = await open_stack(mode, request, tmp_path, **model, embeddings_version="2")
    try:
        c = second.container
        assert c.embeddings is not None
        pipeline = c.embeddings.pipeline
        assert pipeline.spaces is not None
        async with second.api.client(tenant.key) as client:
            # the old space is still live, and semantic queries cannot use it from here:
            # keywords answer, degraded, until the switch
            answer = await search(client, q="tomatoes", mode="hybrid")
            assert answer["mode"] == "keyword" and answer["degraded"] is True
            states = {(s.space.version, s.state) for s in await pipeline.spaces.all()}
            assert states == {("1", "live"), ("2", "building")}
            old = next(s.space for s in await pipeline.spaces.all() if s.state == "live")

            # the re-embedding builds version 2 with progress, then switches
            new = await pipeline.write_space()
            assert await pipeline.spaces.claim(new)
            assert not await pipeline.spaces.claim(new)  # one builder at a time
            seen: list[tuple[int, int]] = []

            async def progress(done: int, total: int) -> None:
                seen.append((done, total))

            result = await rebuild(pipeline, c.db, new, progress)
            assert result["documents"] >= 4 and result["retired"] == old.key
            assert seen and seen[-1][0] == seen[-1][1]
            rows = {s.space.version: s for s in await pipeline.spaces.all()}
            assert (rows["1"].state, rows["2"].state) == ("retired", "live")
            assert rows["2"].done == rows["2"].total >= 4

            # Then queries use the new space, and the old vectors are gone
            hit = await search(client, q=PARAPHRASES["tomato"], mode="semantic")
            assert hit["mode"] == "semantic" and hit["hits"][0]["id"] == ids["tomato"]
            for store in await pipeline.stores():
                assert await store.versions(old, tenant.id) == {}
                assert len(await store.versions(new, tenant.id)) == 4
    finally:
        await close_stack(second)


async def test_the_reconciler_builds_and_switches_by_itself_while_writes_go_on(
    request: pytest.FixtureRequest, tmp_path: Path, endpoint: EmbeddingsServer
) -> None:
    model = {
        **EMBEDDINGS,
        "embeddings_url": endpoint.url,
        "embeddings_model": "test-model",
        "embeddings_dimension": 256,
    }
    first = await open_stack("embedded", request, tmp_path, **model, embeddings_version="1")
    try:
        tenant = await first.api.tenant()
        async with first.api.client(tenant.key) as client:
            ids = {k: (await create(client, *v))["id"] for k, v in DOCS.items()}
            await embedded(first, tenant.id, dict.fromkeys(ids.values(), 1))
    finally:
        await stop_stack(first)

    # When the subscriber process restarts with version 2 and its reconciler on
    second = await open_stack(
        "embedded",
        request,
        tmp_path,
        **{**model, "embeddings_reconcile_seconds": 0.5, "embeddings_reconcile_grace_seconds": 0},
        embeddings_version="2",
    )
    try:
        pipeline = second.container.embeddings.pipeline  # type: ignore[union-attr]
        spaces = pipeline.spaces
        assert spaces is not None
        async with second.api.client(tenant.key) as client:
            # a write during the build goes to the new space
            late = await create(client, "Cycling to work", "Ride a bicycle to the office daily.")

            async def switched() -> bool:
                states = {s.space.version: s.state for s in await spaces.all()}
                return states == {"1": "retired", "2": "live"}

            await second.until(switched, timeout=60, what="version 2 live, version 1 retired")
            new = await pipeline.write_space()
            await embedded(second, tenant.id, {**dict.fromkeys(ids.values(), 1), late["id"]: 1})
            for store in await pipeline.stores():
                assert len(await store.versions(new, tenant.id)) == 5
            hit = await search(client, q="commuting by bike", mode="semantic")
            assert hit["hits"][0]["id"] == late["id"]
            # the build's progress and the drift check are exported as metrics
            registry = second.container.metrics.registry

            def sample(name: str, **labels: str) -> float | None:
                return registry.get_sample_value(name, labels)

            done = sample("capstan_embeddings_rebuild_documents", kind="done")
            assert done is not None and done >= 4
            assert done == sample("capstan_embeddings_rebuild_documents", kind="total")

            async def no_drift() -> bool:
                return sample("capstan_embeddings_drift_documents") == 0

            await second.until(no_drift, timeout=30, what="a drift check finding nothing")
    finally:
        await close_stack(second)


async def test_cancelling_an_embedding_task_stores_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, endpoint: EmbeddingsServer
) -> None:
    from tests.embeddings.server import Fault

    endpoint.faults.append(Fault(hang=True))  # the first request waits for the test
    stack = await open_stack(
        "embedded",
        request,
        tmp_path,
        **EMBEDDINGS,
        embeddings_url=endpoint.url,
        embeddings_model="test-model",
        embeddings_dimension=256,
        embeddings_retry_base_seconds=0.05,
    )
    try:
        tenant = await stack.api.tenant()
        async with stack.api.client(tenant.key) as client:
            doc = await create(client, *DOCS["train"])
            task: dict[str, Any] = {}

            async def embedding() -> bool:
                nonlocal task
                r = await client.get("/v1/tasks", params={"type": "embeddings.document"})
                items = r.json()["items"]
                task = items[0] if items else {}
                return task.get("status") == "running" and len(endpoint.requests) == 1

            await stack.until(embedding, timeout=30, what="the task waiting on the endpoint")
            # When the task is cancelled while its batch is in flight
            r = await client.post(f"/v1/tasks/{task['id']}/cancel")
            assert r.status_code in (200, 202), r.text
            worker = stack.background.worker

            async def seen() -> bool:  # the worker refreshes cancel flags every heartbeat
                return bool(worker._cancel_flags.get(task["id"]))

            await stack.until(seen, timeout=30, what="the worker to see the cancellation")
            endpoint._release.set()  # the hung request fails, the retry succeeds

            async def cancelled() -> bool:
                r = await client.get(f"/v1/tasks/{task['id']}")
                return bool(r.json()["status"] == "cancelled")

            # Then it stops at its next progress point, before anything is written
            await stack.until(cancelled, timeout=30, what="the task cancelled")
            assert len(endpoint.requests) >= 2
            embeddings = stack.container.embeddings
            assert embeddings is not None
            space = await embeddings.pipeline.live_space()
            for store in await embeddings.pipeline.stores():
                assert (tenant.id, doc["id"]) not in await store.versions(space, tenant.id)
    finally:
        await close_stack(stack)
