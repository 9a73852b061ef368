"""Semantic and hybrid retrieval end to end, embedded (SQLite) and production (PostgreSQL,
RabbitMQ, Elasticsearch): a write is chunked and embedded by the `embeddings.document` task,
then found by meaning; updates replace the chunks, deletes remove them, tenants never mix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from capstan.embeddings.pipeline import document_text
from capstan.search.fusion import rrf
from capstan.search.vectors import VectorsUnavailable
from tests.conftest import Api, Stack
from tests.search.conftest import PRODUCTION, close_stack, open_stack

DOCS = {
    "password": (
        "Resetting your password",
        "If you cannot sign in, open the account page and choose a new password. "
        "A confirmation email follows.",
    ),
    "tomato": (
        "Growing tomatoes",
        "Tomatoes need full sun, rich soil and regular watering through the summer.",
    ),
    "train": (
        "Train timetable",
        "The express train leaves the central station every hour on weekdays.",
    ),
    "bread": ("Baking bread", "Knead the dough, let it rise overnight and bake it in a hot oven."),
}
# Paraphrases: no word in common with their document (after stemming), so keyword search
# cannot find them.
PARAPHRASES = {
    "password": "forgot my login credentials",
    "tomato": "vegetable garden plants",
    "train": "railway departures schedule",
}

EMBEDDINGS = {
    "embeddings_enabled": True,
    "embeddings_reconcile_seconds": 0,
    "embeddings_chunk_size": 120,
    "embeddings_chunk_overlap": 20,
}


@pytest.fixture(params=["embedded", PRODUCTION])
async def rag(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await open_stack(request.param, request, tmp_path, **EMBEDDINGS)
    yield stack
    await close_stack(stack)


async def create(client: httpx.AsyncClient, title: str, body: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(
        "/v1/documents", json={"title": title, "body": body, "collection": "kb", **extra}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def stored(stack: Stack, tenant_id: str) -> dict[str, int]:
    """{document id: version} that every vector store holds for the tenant (a document the
    stores disagree on is left out)."""
    embeddings = stack.container.embeddings
    assert embeddings is not None
    space = await embeddings.pipeline.live_space()
    each: list[dict[str, int]] = []
    for store in await embeddings.pipeline.stores():
        await store.refresh()
        versions = await store.versions(space, tenant_id)
        each.append({doc: v for (_t, doc), v in versions.items()})
    return {doc: v for doc, v in each[0].items() if all(e.get(doc) == v for e in each)}


async def embedded(stack: Stack, tenant_id: str, expected: dict[str, int | None]) -> None:
    """Wait until the store holds each document at its version (None: absent)."""

    async def ok() -> bool:
        try:
            have = await stored(stack, tenant_id)
        except VectorsUnavailable:  # a fresh Elasticsearch index may answer 503 at first
            return False
        return all(have.get(doc) == v for doc, v in expected.items())

    await stack.until(ok, timeout=60, what=f"vectors {expected}")


async def search(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/search", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def retrieve(client: httpx.AsyncClient, query: str, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/retrieve", json={"query": query, **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_written_documents_are_found_by_meaning(rag: Stack) -> None:
    api = rag.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        # Given four documents, embedded by the pipeline after their writes
        ids = {k: (await create(client, *v))["id"] for k, v in DOCS.items()}
        await embedded(rag, tenant.id, {i: 1 for i in ids.values()})

        for key, query in PARAPHRASES.items():
            # When searching with a paraphrase, keyword search finds nothing...
            keyword = await search(client, q=query, mode="keyword")
            assert keyword["hits"] == [] and keyword["mode"] == "keyword"
            # ...semantic search finds the document first, with the chunk that matched
            semantic = await search(client, q=query, mode="semantic")
            assert semantic["mode"] == "semantic" and semantic["degraded"] is False
            top = semantic["hits"][0]
            assert top["id"] == ids[key] and top["retrievers"] == ["semantic"]
            assert top["title"] == DOCS[key][0] and top["version"] == 1
            chunk = top["chunk"]
            text = document_text(*DOCS[key])
            assert text[chunk["start"] : chunk["end"]] == chunk["text"]
            assert 0 < chunk["score"] <= 1
            # ...and the default mode is hybrid now that the tenant has embeddings
            auto = await search(client, q=query)
            assert auto["mode"] == "hybrid"
            assert auto["hits"][0]["id"] == ids[key]
            assert auto["hits"][0]["retrievers"] == ["semantic"]

        # The retrieve endpoint returns the top chunks with their text, for a prompt
        got = await retrieve(client, PARAPHRASES["train"], limit=2)
        assert got["chunks"][0]["document_id"] == ids["train"]
        assert len(got["chunks"]) == 2
        assert "express train" in got["chunks"][0]["chunk"]["text"]
        assert got["space"]["dimension"] > 0 and got["space"]["model"]

        # Filters apply in every mode
        filtered = await search(client, q=PARAPHRASES["train"], mode="semantic", collection="x")
        assert filtered["hits"] == []
        filtered_r = await retrieve(client, PARAPHRASES["train"], collection="x")
        assert filtered_r["chunks"] == []


async def test_update_replaces_chunks_and_delete_removes_them(rag: Stack) -> None:
    api = rag.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        doc = await create(client, *DOCS["password"])
        other = await create(client, *DOCS["bread"])
        await embedded(rag, tenant.id, {doc["id"]: 1, other["id"]: 1})

        # When the document is rewritten, its chunks are replaced at the new version
        r = await client.patch(
            f"/v1/documents/{doc['id']}",
            json={"title": "Paying invoices", "body": "Settle each bill by bank transfer."},
        )
        assert r.status_code == 200, r.text
        await embedded(rag, tenant.id, {doc["id"]: 2})
        got = await retrieve(client, "how do I pay my bills", limit=5)
        mine = [c for c in got["chunks"] if c["document_id"] == doc["id"]]
        assert len(mine) == 1 and mine[0]["version"] == 2
        assert "bank transfer" in mine[0]["chunk"]["text"]
        assert got["chunks"][0]["document_id"] == doc["id"]
        old = await retrieve(client, PARAPHRASES["password"], limit=5)
        assert all("password" not in c["chunk"]["text"] for c in old["chunks"])

        # When it is deleted, its vectors go too
        r = await client.delete(f"/v1/documents/{doc['id']}")
        assert r.status_code == 204, r.text
        await embedded(rag, tenant.id, {doc["id"]: None, other["id"]: 1})
        got = await retrieve(client, "how do I pay my bills", limit=5)
        assert [c["document_id"] for c in got["chunks"]] == [other["id"]]
        semantic = await search(client, q="paying bills", mode="semantic")
        assert [h["id"] for h in semantic["hits"]] == [other["id"]]


async def test_tenants_never_see_each_others_chunks(rag: Stack) -> None:
    api = rag.api
    first, second = await api.tenant(), await api.tenant()
    async with api.client(first.key) as a, api.client(second.key) as b:
        mine = await create(a, *DOCS["train"])
        theirs = await create(b, *DOCS["train"])
        await embedded(rag, first.id, {mine["id"]: 1})
        await embedded(rag, second.id, {theirs["id"]: 1})
        for client, own in ((a, mine["id"]), (b, theirs["id"])):
            for mode in ("semantic", "hybrid"):
                hits = (await search(client, q="train station", mode=mode))["hits"]
                assert [h["id"] for h in hits] == [own]
            chunks = (await retrieve(client, "railway departures", limit=10))["chunks"]
            assert [c["document_id"] for c in chunks] == [own]


async def test_hybrid_is_the_reciprocal_rank_fusion_of_both_retrievers(rag: Stack) -> None:
    api = rag.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        ids = {k: (await create(client, *v))["id"] for k, v in DOCS.items()}
        extra = await create(client, "Station opening hours", "The station opens at six.")
        await embedded(rag, tenant.id, {**{i: 1 for i in ids.values()}, extra["id"]: 1})
        query = "train station"
        keyword: dict[str, Any] = {}

        async def indexed() -> bool:  # Elasticsearch is fed asynchronously in production
            nonlocal keyword
            keyword = await search(client, q=query, mode="keyword", limit=50)
            return len(keyword["hits"]) == 2

        await rag.until(indexed, timeout=30, what="both station documents in the index")
        semantic = await search(client, q=query, mode="semantic", limit=50)
        hybrid = await search(client, q=query, mode="hybrid", limit=50)
        assert keyword["hits"] and semantic["hits"]
        expected = rrf(
            {
                "keyword": [h["id"] for h in keyword["hits"]],
                "semantic": [h["id"] for h in semantic["hits"]],
            }
        )
        assert [h["id"] for h in hybrid["hits"]] == [f.id for f in expected]
        assert [h["retrievers"] for h in hybrid["hits"]] == [f.retrievers for f in expected]
        assert [h["score"] for h in hybrid["hits"]] == pytest.approx([f.score for f in expected])
        # The document both retrievers rank highly comes first, and says so
        top = hybrid["hits"][0]
        assert top["id"] == ids["train"] and top["retrievers"] == ["keyword", "semantic"]
        assert top["highlights"] and top["chunk"] is not None
        assert hybrid["engines"][-1].endswith("vectors")

        # POST /v1/search: the same answer from a JSON body
        r = await client.post("/v1/search", json={"q": query, "mode": "hybrid", "limit": 50})
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["hits"]] == [h["id"] for h in hybrid["hits"]]


async def test_mode_and_body_validation(rag: Stack) -> None:
    api = rag.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        bad = [
            client.get("/v1/search", params={"q": "x", "mode": "fuzzy"}),
            client.get("/v1/search", params={"mode": "semantic"}),
            client.get("/v1/search", params={"q": "x", "mode": "hybrid", "cursor": "abc"}),
            client.get("/v1/search", params={"q": "x", "mode": "semantic", "sort": "created"}),
            client.post("/v1/search", json={"q": "x", "unknown": 1}),
            client.post("/v1/search", json={"q": "x", "limit": 0}),
            client.post("/v1/search", json={"q": "x", "metadata": {"bad field": "v"}}),
            client.post("/v1/search", json={"q": "x" * 5000}),
            client.post("/v1/retrieve", json={"query": ""}),
            client.post("/v1/retrieve", json={"query": "x", "limit": 51}),
            client.post("/v1/retrieve", json={"query": "   "}),
            client.post(
                "/v1/retrieve",
                json={"query": "x", "created_after": "2026-01-02", "created_before": "2026-01-01"},
            ),
        ]
        for request in bad:
            r = await request
            assert r.status_code == 422, (r.request.url, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        # Without text, the default is the structured (keyword) flow
        assert (await search(client, collection="kb"))["mode"] == "keyword"


async def test_a_burst_of_updates_embeds_the_latest_version_once(rag: Stack) -> None:
    api = rag.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        doc = await create(client, *DOCS["bread"])
        for i in range(5):
            r = await client.patch(f"/v1/documents/{doc['id']}", json={"body": f"Loaf {i}."})
            assert r.status_code == 200, r.text
        await embedded(rag, tenant.id, {doc["id"]: 6})

        tasks: list[dict[str, Any]] = []

        async def settled() -> bool:
            nonlocal tasks
            r = await client.get("/v1/tasks", params={"type": "embeddings.document"})
            tasks = r.json()["items"]
            return len(tasks) == 6 and all(t["status"] == "succeeded" for t in tasks)

        await rag.until(settled, timeout=60, what="six embedding tasks done")
        # One task per version (the subscriber's dedup key), the latest embedded exactly once;
        # a task that ran after a newer version was written did nothing.
        assert sorted(t["input"]["version"] for t in tasks) == [1, 2, 3, 4, 5, 6]
        latest = [t["result"] for t in tasks if t["input"]["version"] == 6]
        assert latest == [
            {"action": "embedded", "document_id": doc["id"], "version": 6, "chunks": 1}
        ]
        for t in tasks:
            assert t["result"]["action"] in ("embedded", "skipped")
        pipeline = rag.container.embeddings
        assert pipeline is not None

        async def no_progress(fraction: float, message: str | None) -> None:
            return None

        late = await pipeline.pipeline.embed_document(tenant.id, doc["id"], 2, no_progress)
        assert late.action == "skipped"
        got = await retrieve(client, "loaf", limit=1)
        assert got["chunks"][0]["chunk"]["text"].endswith("Loaf 4.")


@pytest.fixture(params=["embedded", PRODUCTION])
async def down(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """Embeddings on, but their endpoint refuses connections (nothing listens there)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack = await open_stack(
        request.param,
        request,
        tmp_path,
        **EMBEDDINGS,
        embeddings_url=f"http://127.0.0.1:{port}/v1",
        embeddings_model="m",
        embeddings_dimension=8,
        embeddings_max_attempts=1,
        embeddings_timeout_seconds=2.0,
    )
    yield stack
    await close_stack(stack)


async def test_vectors_unavailable_answers_with_keywords_degraded(down: Stack) -> None:
    api = down.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        doc = await create(client, *DOCS["train"])
        answer: dict[str, Any] = {}

        async def found() -> bool:
            nonlocal answer
            answer = await search(client, q="train station", mode="hybrid")
            return bool(answer["hits"])

        await down.until(found, timeout=30, what="a keyword hit")
        assert answer["mode"] == "keyword" and answer["degraded"] is True
        assert [h["id"] for h in answer["hits"]] == [doc["id"]]
        assert answer["hits"][0]["retrievers"] == ["keyword"]
        semantic = await search(client, q="train station", mode="semantic")
        assert semantic["mode"] == "keyword" and semantic["degraded"] is True
        r = await client.post("/v1/retrieve", json={"query": "train station"})
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")


@pytest.fixture(params=["embedded", PRODUCTION])
async def unembedded(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """Embeddings on, but the embedder subscriber not running: writes get no vectors."""
    stack = await open_stack(
        request.param,
        request,
        tmp_path,
        **EMBEDDINGS,
        subscribers=["indexer", "cache", "audit", "notifier"],
    )
    yield stack
    await close_stack(stack)


async def test_the_drift_check_resubmits_missing_documents(unembedded: Stack) -> None:
    from capstan.embeddings.reconcile import reconcile_embeddings

    api = unembedded.api
    c = unembedded.container
    assert c.embeddings is not None
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        ids = [(await create(client, *v))["id"] for v in DOCS.values()]
        # Given documents written while nothing embedded them
        report = await reconcile_embeddings(
            c.embeddings.pipeline, c.db, c.tasks, grace_seconds=0, tenants=[tenant.id]
        )
        assert report.missing == 4 and report.drift == 4 and report.submitted == 4
        # Then the submitted tasks embed them, and the next check finds no drift
        await embedded(unembedded, tenant.id, dict.fromkeys(ids, 1))
        again = await reconcile_embeddings(
            c.embeddings.pipeline, c.db, c.tasks, grace_seconds=0, tenants=[tenant.id]
        )
        assert (again.current, again.drift, again.submitted) == (4, 0, 0)
        got = await retrieve(client, PARAPHRASES["tomato"], limit=1)
        assert got["chunks"][0]["document_id"] == ids[1]


async def test_with_embeddings_off_search_is_keyword_and_semantic_is_refused(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        assert api.container.embeddings is None
        assert (await search(client, q="anything"))["mode"] == "keyword"
        for r in (
            await client.get("/v1/search", params={"q": "x", "mode": "semantic"}),
            await client.post("/v1/search", json={"q": "x", "mode": "hybrid"}),
            await client.post("/v1/retrieve", json={"query": "x"}),
        ):
            assert r.status_code == 422, r.text
            assert "CAPSTAN_EMBEDDINGS_ENABLED" in r.json()["detail"]


async def test_a_tenant_without_embeddings_gets_keyword_pages_by_default(
    unembedded: Stack,
) -> None:
    api = unembedded.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        ids = {(await create(client, f"Station {i}", "trains leave here"))["id"] for i in range(3)}
        first: dict[str, Any] = {}

        async def indexed() -> bool:  # Elasticsearch is fed asynchronously in production
            nonlocal first
            first = await search(client, q="station", limit=2)
            return first["total"] == 3

        await unembedded.until(indexed, timeout=30, what="three documents in the index")
        assert first["mode"] == "keyword" and first["degraded"] is False
        assert len(first["hits"]) == 2 and first["next_cursor"]
        rest = await search(client, q="station", limit=2, cursor=first["next_cursor"])
        assert {h["id"] for h in first["hits"] + rest["hits"]} == ids


async def test_the_index_vector_store_down_leaves_the_database_store_answering(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from elasticsearch import AsyncElasticsearch

    from capstan.search.vector_es import ElasticsearchVectors
    from tests.conftest import free_port

    for mark in ("postgres", "redis", "rabbitmq", "elasticsearch"):
        request.applymarker(getattr(pytest.mark, mark))
    stack = await open_stack("production", request, tmp_path, **EMBEDDINGS)
    try:
        tenant = await stack.api.tenant()
        async with stack.api.client(tenant.key) as client:
            ids = {k: (await create(client, *v))["id"] for k, v in DOCS.items()}
            await embedded(stack, tenant.id, dict.fromkeys(ids.values(), 1))
            up = await search(client, q=PARAPHRASES["train"], mode="semantic")
            assert up["engines"] == ["elasticsearch-vectors"] and up["degraded"] is False

            # When the Elasticsearch vector store's server goes away (a closed port)
            embeddings = stack.container.embeddings
            assert embeddings is not None
            [index] = [s for s in await embeddings.pipeline.stores() if s.derived]
            assert isinstance(index, ElasticsearchVectors)
            dead = AsyncElasticsearch(f"http://127.0.0.1:{free_port()}", request_timeout=2)
            monkeypatch.setattr(index, "client", dead)

            # Then the database's store answers, degraded, with the same best document
            down = await search(client, q=PARAPHRASES["train"], mode="semantic")
            assert down["degraded"] is True and down["mode"] == "semantic"
            database = (await embeddings.pipeline.stores())[0]
            assert down["engines"] == [database.name]
            assert down["hits"][0]["id"] == ids["train"]
            got = await retrieve(client, PARAPHRASES["tomato"], limit=1)
            assert got["degraded"] is True and got["chunks"][0]["document_id"] == ids["tomato"]
            await dead.close()
    finally:
        monkeypatch.undo()  # the store's own client, which the container closes
        await close_stack(stack)
