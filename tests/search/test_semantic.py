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
from tests.conftest import Stack
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
    """{document id: version} the database's vector store holds for the tenant."""
    embeddings = stack.container.embeddings
    assert embeddings is not None
    space = await embeddings.pipeline.live_space()
    found: dict[str, int] = {}
    for store in embeddings.pipeline.stores:
        await store.refresh()
        versions = await store.versions(space, tenant_id)
        found = {doc: v for (_t, doc), v in versions.items()}
    return found


async def embedded(stack: Stack, tenant_id: str, expected: dict[str, int | None]) -> None:
    """Wait until the store holds each document at its version (None: absent)."""

    async def ok() -> bool:
        have = await stored(stack, tenant_id)
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
