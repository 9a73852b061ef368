"""Query latency of every vector store at a modest size (docs/embeddings.md has the figures).

    .venv/bin/python bench/vector_latency.py [--docs 2000] [--chunks 5] [--queries 200]

One tenant holds `docs` documents of `chunks` chunks each (256 dimensions, clustered random
unit vectors: 50 topics plus noise), 2% of them in collection "rare". Queries (vectors near a
topic) run one after another after 20 warm-ups: unfiltered top 10, and top 10 of "rare" (the
selective filter). Recall@10 is measured against the exact answer (SQLite's store). Each
store gets its own database / indices, dropped at the end. PostgreSQL and Elasticsearch come
from CAPSTAN_TEST_DATABASE_URL / CAPSTAN_TEST_ELASTICSEARCH_URL (scripts/services env).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url

from capstan.db.engine import create_engine
from capstan.db.migrate import upgrade
from capstan.search.port import Filters
from capstan.search.vectors import ChunkVector, DocumentVectors, Space, VectorQuery, VectorStore

DIM = 256
TENANT = "bench"


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
    for i in range(0, len(docs), 200):
        await store.upsert(space, docs[i : i + 200])
    await store.refresh()
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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    docs, topics = corpus(args.docs, args.chunks)
    rng = np.random.default_rng(11)
    queries = [
        (topics[rng.integers(50)] + 0.8 * rng.normal(size=DIM)).tolist()
        for _ in range(args.queries)
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
        "docs": args.docs,
        "chunks": args.docs * args.chunks,
        "dimension": DIM,
        "queries": args.queries,
        "load_average": os.getloadavg(),
        "stores": results,
    }
    print(json.dumps(report, indent=2))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(__file__).parent / "results" / f"vectors-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
