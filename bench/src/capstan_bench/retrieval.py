"""`capstan bench retrieval`: recall and latency of keyword, semantic and hybrid search on the
embedded engines (SQLite FTS5 and the database vector store), through SearchService as the
API calls it.

Corpus: the standard-library docstring corpus of `capstan bench relevance` (distractors,
`--documents` of them, repeated in more collections when more are asked than it has) plus the
hand-written paraphrase documents (bench/paraphrases.py). Query sets with known answers:
`paraphrase` (each pair's query: few words in common with its document) and `keywords` (the
relevance benchmark's 2-4 content words of a corpus document). Every query runs in each mode
(limit 10, no filters), after one untimed pass; recall@1/@10, MRR@10 and the zero-hit share
per set and mode, and latency p50/p99 per mode over both sets.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from capstan.search.service import Mode
from capstan_bench.common import out
from capstan_bench.paraphrases import PAIRS
from capstan_bench.report import Result, default_output, measured, progress_bar, publish

MODES: tuple[Mode, ...] = ("keyword", "semantic", "hybrid")
K = 10


def _doc_id(key: str) -> str:
    # The ids the relevance loader gives (capstan_bench.relevance.engines.index_docs).
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"capstan-relevance:{key}"))


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 2)


async def measure(documents: int, keyword_queries: int) -> Result:
    from sqlalchemy import text as sql

    from capstan.db.engine import create_engine, sessionmaker
    from capstan.embeddings.pipeline import EmbeddingPipeline, document_text
    from capstan.embeddings.spaces import live_document_pages
    from capstan.observability.metrics import Metrics
    from capstan.search.analysis import analyze
    from capstan.search.port import SearchQuery
    from capstan.search.semantic import VectorSearch
    from capstan.search.service import SearchService
    from capstan.search.sqlite_fts import SqliteFts
    from capstan.search.vector_sql import SqlVectors
    from capstan.settings import Settings
    from capstan_bench.relevance.corpus import CorpusDoc, build_corpus, build_queries
    from capstan_bench.relevance.engines import load_database
    from capstan_bench.relevance.latency import scaled

    stdlib = build_corpus()
    distractors = scaled(stdlib, documents) if documents > len(stdlib) else stdlib[:documents]
    paraphrased = [
        CorpusDoc(f"paraphrase:{i}", title, body, "paraphrase", ("paraphrase",))
        for i, (title, body, _query) in enumerate(PAIRS)
    ]
    sets = {
        "paraphrase": [(q, _doc_id(f"paraphrase:{i}")) for i, (_t, _b, q) in enumerate(PAIRS)],
        "keywords": [
            (q.text, _doc_id(q.expected))
            for q in build_queries(distractors, per_set=keyword_queries)["keywords"]
        ],
    }
    shared = [len(set(analyze(q)) & set(analyze(document_text(t, b)))) for t, b, q in PAIRS]
    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="capstan-retrieval-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        loaded = await load_database("sqlite-fts5", url, [*distractors, *paraphrased])
        await loaded.close()
        engine = create_engine(url)
        db = sessionmaker(engine)
        pipeline = EmbeddingPipeline(
            settings.model_copy(update={"database_url": url}), db, [SqlVectors(engine)]
        )
        try:
            async with engine.connect() as conn:
                tenant = (await conn.execute(sql("SELECT id FROM tenants LIMIT 1"))).scalar_one()
            space = await pipeline.write_space()
            total, pages = await live_document_pages(db)
            chunks = 0
            started = time.perf_counter()
            with progress_bar() as bar:
                task = bar.add_task("embedding documents", total=total)
                async for docs in pages():
                    vectors = await pipeline.vectors_of_many(docs)
                    chunks += sum(len(v.chunks) for v in vectors)
                    await pipeline.write(space, vectors)
                    bar.advance(task, len(docs))
            embed_seconds = time.perf_counter() - started
            service = SearchService(
                SqliteFts(engine),
                None,
                Metrics(),
                vectors=VectorSearch(pipeline, timeout_seconds=60, retry_seconds=0),
            )
            recall: dict[str, dict[str, Any]] = {}
            latency: dict[str, list[float]] = {m: [] for m in MODES}
            with progress_bar() as bar:
                task = bar.add_task(
                    "queries", total=2 * len(MODES) * sum(len(v) for v in sets.values())
                )
                for name, queries in sets.items():
                    recall[name] = {}
                    for mode in MODES:
                        ranks: list[int | None] = []
                        for timed in (False, True):
                            for text, expected in queries:
                                q = SearchQuery(
                                    tenant_id=tenant,
                                    text=text,
                                    limit=K,
                                    with_facets=False,
                                )
                                t0 = time.perf_counter()
                                page = await service.search(q, None, mode)
                                if timed:
                                    latency[mode].append((time.perf_counter() - t0) * 1000)
                                    ids = [h.id for h in page.hits]
                                    ranks.append(
                                        ids.index(expected) + 1 if expected in ids else None
                                    )
                                bar.advance(task)
                        n = len(ranks)
                        recall[name][mode] = {
                            "recall@1": round(sum(r == 1 for r in ranks) / n, 3),
                            "recall@10": round(sum(r is not None for r in ranks) / n, 3),
                            "mrr@10": round(sum(1 / r for r in ranks if r) / n, 3),
                            "queries": n,
                        }
        finally:
            await pipeline.close()
            await engine.dispose()
    return {
        "benchmark": "retrieval",
        "valid": True,
        "invalid_reasons": [],
        "engines": {"keyword": "sqlite-fts5", "semantic": "sqlite-vectors (exact cosine)"},
        "model": {"name": space.model, "version": space.version, "dimension": space.dimension},
        "documents": total,
        "chunks": chunks,
        "chunk_size": settings.embeddings_chunk_size,
        "chunk_overlap": settings.embeddings_chunk_overlap,
        "embed_seconds": round(embed_seconds, 2),
        "paraphrase_shared_terms": {
            "mean": round(statistics.mean(shared), 2),
            "max": max(shared),
            "zero": sum(s == 0 for s in shared),
            "pairs": len(shared),
        },
        "recall": recall,
        "latency_ms": {
            mode: {"p50": _percentile(v, 0.5), "p99": _percentile(v, 0.99), "n": len(v)}
            for mode, v in latency.items()
        },
        "rrf_k": 60,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def render(result: Result) -> None:
    table = Table(title=f"retrieval, {result['documents']} documents ({result['chunks']} chunks)")
    table.add_column("set")
    table.add_column("mode")
    for column in ("recall@1", "recall@10", "mrr@10"):
        table.add_column(column, justify="right")
    for name, modes in result["recall"].items():
        for mode, r in modes.items():
            table.add_row(name, mode, *(f"{r[c]:.3f}" for c in ("recall@1", "recall@10", "mrr@10")))
    out.print(table)
    lat = Table(title="latency per query (ms)")
    for column in ("mode", "p50", "p99", "queries"):
        lat.add_column(column)
    for mode, v in result["latency_ms"].items():
        lat.add_row(mode, f"{v['p50']:.2f}", f"{v['p99']:.2f}", str(v["n"]))
    out.print(lat)
    s = result["paraphrase_shared_terms"]
    out.print(
        f"paraphrase queries share {s['mean']} analyzed terms with their document on average "
        f"(max {s['max']}; {s['zero']}/{s['pairs']} share none)"
    )


def retrieval_command(
    documents: Annotated[
        int, typer.Option(min=0, help="Distractor documents (standard-library corpus).")
    ] = 1500,
    keyword_queries: Annotated[int, typer.Option(min=1, help="Queries in the keywords set.")] = 100,
    output: Annotated[
        Path | None,
        typer.Option(help="JSON result file (default bench/results/retrieval-<UTC>.json)."),
    ] = None,
) -> None:
    """Recall@10 and latency of keyword, semantic and hybrid search (embedded engines)."""
    now = datetime.now(UTC)
    result = measured(
        "retrieval",
        lambda: asyncio.run(measure(documents, keyword_queries)),
        cleaned_up="the temporary database is removed",
    )
    publish(result, output or default_output("retrieval", now), render)
