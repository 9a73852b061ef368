"""`capstan bench vectors`: query latency and recall of every vector store (docs/embeddings.md
has the figures).

    capstan bench vectors [--docs 2000] [--chunks 5] [--queries 200]
    capstan bench vectors --docs 20000 --chunks 5      # 100k chunks per store

One tenant holds `docs` documents of `chunks` chunks each (256 dimensions, clustered random
unit vectors: 50 topics plus noise), 2% of them in collection "rare". Queries (vectors near a
topic) run one after another after 20 warm-ups: unfiltered top 10, and top 10 of "rare" (the
selective filter). Recall@10 is measured against the exact answer (SQLite's store). Each
store gets its own database / indices, dropped at the end. PostgreSQL and Elasticsearch come
from CAPSTAN_TEST_DATABASE_URL / CAPSTAN_TEST_ELASTICSEARCH_URL (scripts/services env).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from sqlalchemy.engine import make_url

from capstan.db.engine import create_engine
from capstan.db.migrate import upgrade
from capstan.search.port import Filters
from capstan.search.vectors import ChunkVector, DocumentVectors, Space, VectorQuery, VectorStore

DIM = 256
TENANT = "bench"
console = Console(stderr=True)


def corpus(docs: int, chunks: int, seed: int = 7) -> tuple[list[DocumentVectors], Any]:
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(50, DIM)).astype(np.float32)
    out = []
    for d in range(docs):
        topic = topics[rng.integers(50)]
        vecs = topic + 0.8 * rng.normal(size=(chunks, DIM)).astype(np.float32)
        out.append(
            DocumentVectors(
                TENANT,
                f"doc-{d:06d}",
                1,
                "rare" if d % 50 == 0 else "common",
                ("t",),
                {},
                datetime(2026, 1, 1, tzinfo=UTC),
                tuple(
                    ChunkVector(i, i * 100, i * 100 + 99, f"chunk {i}", v.tolist())
                    for i, v in enumerate(vecs)
                ),
            )
        )
    return out, topics


async def measure(
    store: VectorStore,
    space: Space,
    docs: list[DocumentVectors],
    queries: list[list[float]],
    after_load: Any = None,
) -> dict[str, Any]:
    await store.ensure_space(space)
    started = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        loading = bar.add_task(f"{store.name}: loading", total=len(docs))
        for i in range(0, len(docs), 200):
            await store.upsert(space, docs[i : i + 200])
            bar.advance(loading, len(docs[i : i + 200]))
    await store.refresh()
    console.print(
        f"{store.name}: {len(docs):,} documents loaded in {time.perf_counter() - started:.1f} s"
    )
    load = time.perf_counter() - started
    if after_load is not None:
        await after_load()
    out: dict[str, Any] = {"load_seconds": round(load, 1)}
    answers: dict[str, list[list[str]]] = {}
    for label, filters in (("all", Filters()), ("rare", Filters(collection="rare"))):
        for q in queries[:20]:
            await store.query(space, VectorQuery(TENANT, q, filters=filters, limit=10))
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            hits = await store.query(space, VectorQuery(TENANT, q, filters=filters, limit=10))
            times.append((time.perf_counter() - t) * 1000)
            found.append([h.document_id for h in hits])
        times.sort()
        out[label] = {
            "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2),
            "returned": min(len(f) for f in found),
        }
        answers[label] = found
    out["_answers"] = answers
    return out


async def run(docs_n: int, chunks_n: int, queries_n: int, output: Path | None) -> None:
    docs, topics = corpus(docs_n, chunks_n)
    rng = np.random.default_rng(11)
    queries = [
        (topics[rng.integers(50)] + 0.8 * rng.normal(size=DIM)).tolist() for _ in range(queries_n)
    ]
    space = Space("bench", uuid.uuid4().hex[:6], DIM)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        from capstan.search.vector_sql import SqlVectors

        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        await upgrade(url)
        engine = create_engine(url)
        results["sqlite"] = await measure(SqlVectors(engine), space, docs, queries)
        await engine.dispose()

    pg = os.environ.get("CAPSTAN_TEST_DATABASE_URL")
    if pg:
        from sqlalchemy import text

        from capstan.search.pgvector import PgVectors
        from capstan.search.vector_sql import SqlVectors

        name = f"capstan_vecbench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(pg, pool_size=1)
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(pg).set(database=name).render_as_string(hide_password=False)
        try:
            await upgrade(url)
            engine = create_engine(url, pool_size=2)

            async def analyze() -> None:  # the planner's statistics, as autovacuum would
                async with engine.begin() as conn:
                    await conn.execute(text("ANALYZE vector_chunks"))
                    await conn.execute(text("ANALYZE vector_documents"))

            results["pgvector"] = await measure(PgVectors(engine), space, docs, queries, analyze)
            other = Space("bench", space.version + "b", DIM)
            results["postgres-exact"] = await measure(
                SqlVectors(engine), other, docs, queries, analyze
            )
            await engine.dispose()
        finally:
            async with admin.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await admin.dispose()

    es = os.environ.get("CAPSTAN_TEST_ELASTICSEARCH_URL")
    if es:
        from capstan.search.vector_es import ElasticsearchVectors

        store = ElasticsearchVectors(es, prefix=f"bench-{uuid.uuid4().hex[:8]}", timeout_seconds=30)
        try:
            results["elasticsearch"] = await measure(store, space, docs, queries)
        finally:
            await store.drop_space(space)
            await store.close()

    exact = results["sqlite"].pop("_answers")
    for r in results.values():
        answers = r.pop("_answers", None)
        if answers is None:
            continue
        for label in ("all", "rare"):
            pairs = zip(answers[label], exact[label], strict=True)
            recall = statistics.mean(len(set(a) & set(b)) / max(1, len(b)) for a, b in pairs)
            r[label]["recall_at_10"] = round(recall, 3)
    report = {
        "docs": docs_n,
        "chunks": docs_n * chunks_n,
        "dimension": DIM,
        "queries": queries_n,
        "load_average": os.getloadavg(),
        "stores": results,
    }
    print(json.dumps(report, indent=2))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = output or Path("bench/results") / f"vectors-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results: {out}")


def vectors_command(
    docs: Annotated[int, typer.Option(min=10, help="Documents in the one tenant.")] = 2000,
    chunks: Annotated[int, typer.Option(min=1, help="Chunks per document.")] = 5,
    queries: Annotated[int, typer.Option(min=20, help="Timed queries per filter.")] = 200,
    output: Annotated[
        Path | None,
        typer.Option(help="JSON result file (default bench/results/vectors-<UTC stamp>.json)."),
    ] = None,
) -> None:
    """Vector query latency p50/p99 and recall@10 per store (SQLite, pgvector, PostgreSQL
    exact, Elasticsearch kNN), unfiltered and with a 2% filter."""
    asyncio.run(run(docs, chunks, queries, output))
