"""`capstan bench search-embedded`: the embedded engine's (SQLite FTS5) query latency at N
documents, with everything a search page costs: the page, the count, both facets, the idf
statistics and the highlights. Documents are the standard library corpus repeated in several
collections and tags until there are N; queries are its keyword query set. Sequential, one
query at a time, after one untimed pass."""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from capstan_bench.relevance.corpus import CorpusDoc, build_corpus, build_queries

out = Console()


def scaled(corpus: list[CorpusDoc], n: int) -> list[CorpusDoc]:
    """`n` documents: copies of the corpus, each copy in its own collection with its own tag."""
    docs: list[CorpusDoc] = []
    copy = 0
    while len(docs) < n:
        for d in corpus[: n - len(docs)]:
            docs.append(
                replace(
                    d,
                    key=f"{d.key}#{copy}",
                    collection=f"{d.collection}-{copy % 7}",
                    tags=(*d.tags, f"copy-{copy % 5}"),
                )
            )
        copy += 1
    return docs


async def measure(documents: int, queries: int) -> dict[str, Any]:
    from sqlalchemy import text

    from capstan.db.engine import create_engine
    from capstan.search.port import SearchQuery
    from capstan.search.sqlite_fts import SqliteFts
    from capstan_bench.relevance.engines import load_database

    corpus = build_corpus()
    texts = [q.text for q in build_queries(corpus, per_set=queries)["keywords"]]
    with tempfile.TemporaryDirectory(prefix="capstan-fts-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        loaded = await load_database("sqlite-fts5", url, scaled(corpus, documents))
        await loaded.close()
        engine = create_engine(url)
        search = SqliteFts(engine)

        async with engine.connect() as conn:
            tenant = (await conn.execute(text("SELECT id FROM tenants LIMIT 1"))).scalar_one()
        timings: list[float] = []
        totals: list[int] = []
        try:
            for timed in (False, True):
                for q in texts:
                    started = time.perf_counter()
                    result = await search.query(SearchQuery(tenant_id=tenant, text=q, limit=20))
                    if timed:
                        timings.append((time.perf_counter() - started) * 1000)
                        totals.append(result.total)
        finally:
            await engine.dispose()
    timings.sort()
    return {
        "benchmark": "search-embedded",
        "documents": documents,
        "queries": len(timings),
        "p50_ms": round(statistics.median(timings), 2),
        "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 2),
        "max_ms": round(timings[-1], 2),
        "median_total_hits": statistics.median(totals),
    }


def embedded_command(
    documents: Annotated[int, typer.Option(help="How many documents.")] = 10_000,
    queries: Annotated[int, typer.Option(help="How many keyword queries.")] = 200,
    output: Annotated[
        Path | None,
        typer.Option(help="Result file (default bench/results/search-embedded-<UTC>.json)."),
    ] = None,
) -> None:
    """Embedded (SQLite FTS5) search latency: page + count + facets + highlights."""
    import json
    import platform
    from datetime import UTC, datetime

    result = asyncio.run(measure(documents, queries))
    result |= {"python": platform.python_version(), "cpus": os.cpu_count()}
    out.print(json.dumps(result, indent=2))
    path = output or Path("bench/results") / (
        f"search-embedded-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    out.print(f"written to {path}")
