"""One contract for every vector store (search/vectors.py): each adapter is one fixture in
`ADAPTERS`, and every test runs against each of them on its real server.

Exact-order checks use synthetic unit vectors in a plane (`angle(θ)`: the cosine with the
query `angle(0)` is cos θ); the semantic checks embed real texts with the offline model."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from capstan.db.engine import create_engine
from capstan.db.migrate import upgrade
from capstan.embeddings.static import StaticEmbedder
from capstan.search.port import Filters, Removal
from capstan.search.vector_sql import SqlVectors
from capstan.search.vectors import (
    ChunkVector,
    DocumentVectors,
    Space,
    VectorDimensionError,
    VectorQuery,
    VectorStore,
    VectorsUnavailable,
)
from tests.conftest import free_port

DIM = 8
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Adapter:
    store: VectorStore
    # A store of this kind whose server cannot be reached.
    broken: Callable[[], Awaitable[VectorStore]]
    # Another store on the same server (another process's: its own caches and clients).
    twin: Callable[[], Awaitable[VectorStore]]


async def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Adapter]:
    url = f"sqlite:///{tmp_path / 'vectors.db'}"
    await upgrade(url)
    engine = create_engine(url)

    async def broken() -> VectorStore:
        return SqlVectors(create_engine(f"sqlite:///{tmp_path / 'missing' / 'no.db'}"))

    async def twin() -> VectorStore:
        return SqlVectors(engine)

    try:
        yield Adapter(SqlVectors(engine), broken, twin)
    finally:
        await engine.dispose()


async def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Adapter]:
    from sqlalchemy.engine import make_url

    url = request.getfixturevalue("postgres_url")  # migrated once per run, shared
    engine = create_engine(url, pool_size=2)

    async def broken() -> VectorStore:
        closed = make_url(url).set(port=free_port()).render_as_string(hide_password=False)
        return SqlVectors(create_engine(closed, pool_size=1))

    async def twin() -> VectorStore:
        return SqlVectors(engine)

    try:
        yield Adapter(SqlVectors(engine), broken, twin)
    finally:
        await engine.dispose()


async def _pgvector(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Adapter]:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from capstan.search.pgvector import PgVectors

    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url, pool_size=2)
    async with engine.connect() as conn:
        column = await conn.execute(
            text(
                "SELECT 1 FROM information_schema.columns "
                "WHERE table_name = 'vector_chunks' AND column_name = 'embedding'"
            )
        )
        # scripts/services installs pgvector; without it migration 0008 leaves this out.
        assert column.first() is not None, "pgvector is not installed on the test server"

    async def broken() -> VectorStore:
        closed = make_url(url).set(port=free_port()).render_as_string(hide_password=False)
        return PgVectors(create_engine(closed, pool_size=1))

    async def twin() -> VectorStore:
        return PgVectors(engine)

    try:
        yield Adapter(PgVectors(engine), broken, twin)
    finally:
        await engine.dispose()


async def _elasticsearch(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Adapter]:
    from capstan.search.vector_es import ElasticsearchVectors
    from tests.conftest import service_url

    prefix = f"test-{uuid.uuid4().hex[:10]}"  # this test's own indices
    store = ElasticsearchVectors(service_url("elasticsearch"), prefix=prefix, timeout_seconds=30)

    async def broken() -> VectorStore:
        return ElasticsearchVectors(f"http://127.0.0.1:{free_port()}", timeout_seconds=2)

    async def twin() -> VectorStore:
        return ElasticsearchVectors(service_url("elasticsearch"), prefix=prefix, timeout_seconds=30)

    try:
        yield Adapter(store, broken, twin)
    finally:
        found = await store.client.indices.get(index=f"{prefix}-*", allow_no_indices=True)
        for name in found.body:
            await store.client.indices.delete(index=name, ignore_unavailable=True)
        await store.close()


ADAPTERS: dict[str, Callable[[pytest.FixtureRequest, Path], AsyncIterator[Adapter]]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
    "pgvector": _pgvector,
    "elasticsearch": _elasticsearch,
}
MARKS = {
    "postgres": [pytest.mark.postgres],
    "pgvector": [pytest.mark.postgres],
    "elasticsearch": [pytest.mark.elasticsearch],
}


@pytest.fixture(params=[pytest.param(name, marks=MARKS.get(name, [])) for name in ADAPTERS])
async def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Adapter]:
    async for made in ADAPTERS[request.param](request, tmp_path):
        yield made


@pytest.fixture
async def store(adapter: Adapter) -> AsyncIterator[VectorStore]:
    yield adapter.store


@pytest.fixture
async def space(store: VectorStore) -> AsyncIterator[Space]:
    """A space of this test only (the PostgreSQL database is shared by the run)."""
    made = Space(model=f"test-{uuid.uuid4().hex[:8]}", version="1", dimension=DIM)
    await store.ensure_space(made)
    yield made
    await store.drop_space(made)


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def angle(theta: float, dim: int = DIM) -> list[float]:
    return [math.cos(theta), math.sin(theta)] + [0.0] * (dim - 2)


def doc(
    tenant: str,
    doc_id: str,
    *thetas: float,
    version: int = 1,
    collection: str = "a",
    tags: tuple[str, ...] = (),
    metadata: dict[str, Any] | None = None,
    created_at: datetime = T0,
    text: str = "",
) -> DocumentVectors:
    chunks = tuple(
        ChunkVector(
            index=i,
            start=i * 10,
            end=i * 10 + 9,
            text=text or f"{doc_id} chunk {i} v{version}",
            vector=angle(t),
        )
        for i, t in enumerate(thetas)
    )
    return DocumentVectors(
        tenant_id=tenant,
        document_id=doc_id,
        version=version,
        collection=collection,
        tags=tags,
        metadata=metadata or {},
        created_at=created_at,
        chunks=chunks,
    )


async def search(
    store: VectorStore, space: Space, tenant: str, limit: int = 20, **filters: Any
) -> list[str]:
    await store.refresh()
    hits = await store.query(
        space, VectorQuery(tenant, angle(0.0), filters=Filters(**filters), limit=limit)
    )
    return [h.document_id for h in hits]


async def versions(
    store: VectorStore, space: Space, tenant: str | None = None
) -> dict[tuple[str, str], int]:
    await store.refresh()
    return await store.versions(space, tenant)


async def test_order_by_cosine_with_scores(store: VectorStore, space: Space, tenant: str) -> None:
    report = await store.upsert(
        space,
        [
            doc(tenant, "c", 1.0),
            doc(tenant, "a", 0.1),
            doc(tenant, "d", 2.0),
            doc(tenant, "b", 0.5),
        ],
    )
    assert report.applied == 4 and report.stale == 0 and not report.failed
    await store.refresh()
    hits = await store.query(space, VectorQuery(tenant, angle(0.0)))
    assert [h.document_id for h in hits] == ["a", "b", "c", "d"]
    for h, theta in zip(hits, (0.1, 0.5, 1.0, 2.0), strict=True):
        assert h.score == pytest.approx(math.cos(theta), abs=1e-3)
        assert h.version == 1
    assert await search(store, space, tenant, limit=2) == ["a", "b"]


async def test_best_chunk_of_each_document(store: VectorStore, space: Space, tenant: str) -> None:
    await store.upsert(space, [doc(tenant, "x", 1.5, 0.2, 0.9), doc(tenant, "y", 0.4, 0.3)])
    await store.refresh()
    hits = await store.query(space, VectorQuery(tenant, angle(0.0)))
    assert [(h.document_id, h.chunk) for h in hits] == [("x", 1), ("y", 1)]
    x = hits[0]
    assert (x.start, x.end, x.text) == (10, 19, "x chunk 1 v1")
    assert x.score == pytest.approx(math.cos(0.2), abs=1e-3)


async def test_limit_documents_even_when_a_filter_matches_few(
    store: VectorStore, space: Space, tenant: str
) -> None:
    """The filter runs inside the query: 200 nearer documents elsewhere do not crowd out the
    5 far ones that match."""
    near = [doc(tenant, f"near-{i:03d}", 0.001 * i, collection="A") for i in range(200)]
    far = [doc(tenant, f"far-{i}", 2.0 + 0.1 * i, collection="B") for i in range(5)]
    await store.upsert(space, near + far)
    assert await search(store, space, tenant, limit=10, collection="B") == [
        f"far-{i}" for i in range(5)
    ]
    assert await search(store, space, tenant, limit=3, collection="B") == [
        "far-0",
        "far-1",
        "far-2",
    ]
    assert len(await search(store, space, tenant, limit=50)) == 50


async def test_tenants_are_isolated(store: VectorStore, space: Space, tenant: str) -> None:
    other = f"t-{uuid.uuid4().hex[:12]}"
    await store.upsert(space, [doc(tenant, "mine", 0.5), doc(other, "theirs", 0.0)])
    assert await search(store, space, tenant) == ["mine"]
    assert await search(store, space, other) == ["theirs"]
    assert await versions(store, space, tenant) == {(tenant, "mine"): 1}
    # The same document id in two tenants is two documents.
    await store.upsert(space, [doc(other, "mine", 0.1, version=7)])
    assert await versions(store, space, other) == {(other, "theirs"): 1, (other, "mine"): 7}
    assert await versions(store, space, tenant) == {(tenant, "mine"): 1}


async def test_tags_all_and_any(store: VectorStore, space: Space, tenant: str) -> None:
    await store.upsert(
        space,
        [
            doc(tenant, "ab", 0.1, tags=("a", "b")),
            doc(tenant, "a", 0.2, tags=("a",)),
            doc(tenant, "c", 0.3, tags=("c",)),
            doc(tenant, "none", 0.4),
        ],
    )
    assert await search(store, space, tenant, tags=("a", "b")) == ["ab"]
    assert await search(store, space, tenant, tags=("a",)) == ["ab", "a"]
    assert await search(store, space, tenant, tags=("b", "c"), tags_mode="any") == ["ab", "c"]


async def test_metadata_and_collection(store: VectorStore, space: Space, tenant: str) -> None:
    await store.upsert(
        space,
        [
            doc(tenant, "en", 0.1, metadata={"lang": "en", "n": 3, "ok": True}),
            doc(tenant, "fr", 0.2, metadata={"lang": "fr", "n": 3}, collection="b"),
            doc(tenant, "nested", 0.3, metadata={"lang": {"x": 1}}),
        ],
    )
    assert await search(store, space, tenant, metadata=(("lang", "en"),)) == ["en"]
    assert await search(store, space, tenant, metadata=(("n", "3"),)) == ["en", "fr"]
    assert await search(store, space, tenant, metadata=(("n", "3"), ("ok", "true"))) == ["en"]
    assert await search(store, space, tenant, metadata=(("n", "3"),), collection="b") == ["fr"]
    assert await search(store, space, tenant, metadata=(("lang", "de"),)) == []


async def test_created_range(store: VectorStore, space: Space, tenant: str) -> None:
    await store.upsert(
        space,
        [doc(tenant, f"d{i}", 0.1 * i, created_at=T0 + timedelta(days=i)) for i in range(5)],
    )
    after, before = T0 + timedelta(days=1), T0 + timedelta(days=4)
    assert await search(store, space, tenant, created_after=after) == ["d2", "d3", "d4"]
    assert await search(store, space, tenant, created_before=before) == ["d0", "d1", "d2", "d3"]
    assert await search(store, space, tenant, created_after=after, created_before=before) == [
        "d2",
        "d3",
    ]


async def test_an_update_replaces_every_chunk(
    store: VectorStore, space: Space, tenant: str
) -> None:
    await store.upsert(space, [doc(tenant, "d", 0.0, 0.1, 0.2, text="old text")])
    await store.upsert(space, [doc(tenant, "d", 1.0, version=2, text="new text")])
    await store.refresh()
    hits = await store.query(space, VectorQuery(tenant, angle(0.0)))
    assert [(h.document_id, h.version, h.chunk, h.text) for h in hits] == [("d", 2, 0, "new text")]
    assert hits[0].score == pytest.approx(math.cos(1.0), abs=1e-3)
    # The same version again is applied (re-embedding rewrites it).
    again = await store.upsert(space, [doc(tenant, "d", 0.5, version=2, text="re-embedded")])
    assert again.applied == 1
    await store.refresh()
    hits = await store.query(space, VectorQuery(tenant, angle(0.0)))
    assert [h.text for h in hits] == ["re-embedded"]


async def test_a_stale_version_is_ignored(store: VectorStore, space: Space, tenant: str) -> None:
    await store.upsert(space, [doc(tenant, "d", 1.0, version=3, text="v3")])
    report = await store.upsert(space, [doc(tenant, "d", 0.0, version=2, text="v2")])
    assert (report.applied, report.stale) == (0, 1)
    await store.refresh()
    hits = await store.query(space, VectorQuery(tenant, angle(0.0)))
    assert [(h.version, h.text) for h in hits] == [(3, "v3")]
    assert await versions(store, space, tenant) == {(tenant, "d"): 3}


async def test_delete_removes_and_a_stale_upsert_cannot_resurrect(
    store: VectorStore, space: Space, tenant: str
) -> None:
    await store.upsert(space, [doc(tenant, "gone", 0.1, version=2), doc(tenant, "kept", 0.2)])
    report = await store.delete(space, [Removal(tenant, "gone", 2)])
    assert report.applied == 1
    assert await search(store, space, tenant) == ["kept"]
    late = await store.upsert(space, [doc(tenant, "gone", 0.0, version=2)])
    assert (late.applied, late.stale) == (0, 1)
    assert await search(store, space, tenant) == ["kept"]
    assert await versions(store, space, tenant) == {(tenant, "kept"): 1}
    # Deleting what was never stored is not an error; a later replay of it stays out.
    await store.delete(space, [Removal(tenant, "never", 1)])
    await store.upsert(space, [doc(tenant, "never", 0.0, version=1)])
    assert await search(store, space, tenant) == ["kept"]


async def test_spaces_are_isolated(store: VectorStore, space: Space, tenant: str) -> None:
    other = Space(model=space.model, version="2", dimension=DIM)
    await store.ensure_space(other)
    try:
        await store.upsert(space, [doc(tenant, "d", 0.1, text="in one")])
        await store.upsert(other, [doc(tenant, "d", 0.2, version=5, text="in two")])
        await store.refresh()
        one = await store.query(space, VectorQuery(tenant, angle(0.0)))
        two = await store.query(other, VectorQuery(tenant, angle(0.0)))
        assert [(h.text, h.version) for h in one] == [("in one", 1)]
        assert [(h.text, h.version) for h in two] == [("in two", 5)]
        await store.drop_space(other)
        assert await search(store, space, tenant) == ["d"]
        assert await versions(store, space) == {(tenant, "d"): 1}
    finally:
        await store.drop_space(other)


async def test_a_wrong_dimension_is_refused(store: VectorStore, space: Space, tenant: str) -> None:
    bad = DocumentVectors(
        tenant, "bad", 1, "a", (), {}, T0, (ChunkVector(0, 0, 1, "x", [1.0] * (DIM - 1)),)
    )
    with pytest.raises(VectorDimensionError, match=f"7 dimensions but .* holds {DIM}"):
        await store.upsert(space, [doc(tenant, "ok", 0.1), bad])
    with pytest.raises(VectorDimensionError, match="query vector"):
        await store.query(space, VectorQuery(tenant, [1.0] * (DIM + 1)))
    # Nothing of the refused batch was written.
    assert await versions(store, space, tenant) == {}


async def test_versions_lists_live_documents(store: VectorStore, space: Space, tenant: str) -> None:
    other = f"t-{uuid.uuid4().hex[:12]}"
    await store.upsert(
        space, [doc(tenant, "a", 0.1, version=4), doc(tenant, "b", 0.2), doc(other, "c", 0.3)]
    )
    await store.delete(space, [Removal(tenant, "b", 1)])
    await store.refresh()
    assert await versions(store, space, tenant) == {(tenant, "a"): 4}
    everything = await versions(store, space)
    assert everything == {(tenant, "a"): 4, (other, "c"): 1}


async def test_unreachable_store_raises_unavailable(adapter: Adapter, space: Space) -> None:
    broken = await adapter.broken()
    try:
        with pytest.raises(VectorsUnavailable):
            await broken.ping()
        with pytest.raises(VectorsUnavailable):
            await broken.query(space, VectorQuery("t", angle(0.0)))
        with pytest.raises(VectorsUnavailable):
            await broken.upsert(space, [doc("t", "d", 0.1)])
    finally:
        await broken.close()


async def test_another_process_sees_every_write(
    adapter: Adapter, store: VectorStore, space: Space, tenant: str
) -> None:
    """A reader that answered before (and may keep what it read) sees each later write made
    by another store on the same server."""
    reader = await adapter.twin()
    try:

        async def read(**filters: Any) -> list[tuple[str, int, str]]:
            await store.refresh()
            hits = await reader.query(
                space, VectorQuery(tenant, angle(0.0), filters=Filters(**filters))
            )
            return [(h.document_id, h.version, h.text) for h in hits]

        assert await read() == []
        await store.upsert(space, [doc(tenant, "d", 0.1, text="one")])
        assert await read() == [("d", 1, "one")]
        assert await read(collection="a") == [("d", 1, "one")]
        await store.upsert(space, [doc(tenant, "d", 0.2, version=2, text="two", collection="b")])
        assert await read() == [("d", 2, "two")]
        assert await read(collection="a") == []
        await store.upsert(space, [doc(tenant, "e", 0.0, text="three")])
        assert await read() == [("e", 1, "three"), ("d", 2, "two")]
        await store.delete(space, [Removal(tenant, "e", 1)])
        assert await read() == [("d", 2, "two")]
        await store.drop_space(space)
        assert await read() == []
    finally:
        await reader.close()


# --- semantic checks with the offline model ------------------------------------------------

TEXTS = {
    "car": "The mechanic replaced the brakes and changed the engine oil of my automobile.",
    "cook": "Simmer the tomatoes with garlic and basil, then pour the sauce over pasta.",
    "login": "I forgot my credentials and need to change them to sign in to my account.",
    "sky": "Clouds gathered over the mountains and heavy rain fell through the night.",
}


@pytest.fixture(scope="module")
def embedder() -> StaticEmbedder:
    return StaticEmbedder.load()


async def test_paraphrases_find_their_document(
    store: VectorStore, embedder: StaticEmbedder, tenant: str
) -> None:
    space = Space(embedder.model, f"{embedder.version}-{uuid.uuid4().hex[:6]}", embedder.dimension)
    await store.ensure_space(space)
    try:
        vectors = await embedder.embed(list(TEXTS.values()))
        docs = [
            DocumentVectors(
                tenant, key, 1, "a", (), {}, T0, (ChunkVector(0, 0, len(text), text, vector),)
            )
            for (key, text), vector in zip(TEXTS.items(), vectors, strict=True)
        ]
        await store.upsert(space, docs)
        await store.refresh()
        for query, expected in [
            ("How do I reset my password?", "login"),
            ("car repair garage", "car"),
            ("a recipe for italian dinner", "cook"),
            ("stormy weather forecast", "sky"),
        ]:
            (qv,) = await embedder.embed([query])
            hits = await store.query(space, VectorQuery(tenant, qv, limit=4))
            assert hits[0].document_id == expected, (query, [h.document_id for h in hits])
            assert hits[0].text == TEXTS[expected]
            assert len(hits) == 4
            assert hits[0].score > hits[-1].score
    finally:
        await store.drop_space(space)
