"""`capstan bench search`: bulk indexing throughput and query latency, in one run.

A scratch PostgreSQL database gets N generated documents (default 100,000; Zipf-distributed
words); a reindex (the production backfill path: keyset pages from PostgreSQL → bulk into a
new Elasticsearch index with external versions) measures indexing docs/s; then a query mix
(text only, text + filters, filters only) is timed three ways, sequentially, one query at a
time: the merged API (`GET /v1/search` in-process over ASGI, no network), Elasticsearch
directly (the adapter), and the PostgreSQL fallback (the adapter). Results go to
bench/results/search-<UTC>.json. See bench/README.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from capstan_bench.common import (
    BenchError,
    admin,
    err,
    git_commit,
    redact,
    resolve_backends,
    seed_tenant,
    with_database,
)
from capstan_bench.latency import nearest_percentile
from capstan_bench.report import default_output, write_json

MIX = ("text", "text+filters", "filters")


def _vocabulary(rng: random.Random, n: int = 3000) -> list[str]:
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < n:
        words.add(
            "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4)))
        )
    return sorted(words)


async def _insert(
    url: str, tenant_id: str, docs: int, rng: random.Random, vocab: list[str]
) -> float:
    from sqlalchemy import insert

    from capstan.db.engine import create_engine
    from capstan.db.schema import Document
    from capstan.ids import uuid7

    weights = [1 / (i + 1) for i in range(len(vocab))]
    engine = create_engine(url)
    started = time.perf_counter()
    base = datetime.now(UTC) - timedelta(days=365)
    try:
        for start in range(0, docs, 2000):
            rows = []
            for i in range(start, min(docs, start + 2000)):
                words = rng.choices(vocab, weights, k=65)
                created = base + timedelta(seconds=i * 300)
                rows.append(
                    {
                        "id": uuid7(),
                        "tenant_id": tenant_id,
                        "collection": f"c{rng.randrange(20)}",
                        "title": " ".join(words[:5]),
                        "body": " ".join(words[5:]),
                        "tags": rng.sample([f"t{j}" for j in range(50)], rng.randint(1, 3)),
                        "metadata": {"lang": rng.choice(["en", "fr", "de"])},
                        "version": 1,
                        "created_at": created,
                        "updated_at": created,
                    }
                )
            async with engine.begin() as conn:
                await conn.execute(insert(Document.__table__), rows)  # type: ignore[arg-type]
            err.print(f"inserted {min(docs, start + 2000)}/{docs}", end="\r")
    finally:
        await engine.dispose()
    err.print()
    return time.perf_counter() - started


def _queries(rng: random.Random, vocab: list[str], n: int) -> dict[str, list[dict[str, Any]]]:
    common = vocab[:300]  # frequent words: realistic, and queries that match many documents
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in MIX}
    for _ in range(n):
        out["text"].append({"q": " ".join(rng.sample(common, rng.randint(1, 2)))})
        out["text+filters"].append(
            {
                "q": rng.choice(common),
                "collection": f"c{rng.randrange(20)}",
                "tag": f"t{rng.randrange(50)}",
            }
        )
        out["filters"].append(
            {
                "collection": f"c{rng.randrange(20)}",
                "tag": f"t{rng.randrange(50)}",
                "sort": "created",
            }
        )
    return out


def _query(tenant_id: str, params: dict[str, Any]) -> Any:
    from capstan.search.port import Filters, SearchQuery

    return SearchQuery(
        tenant_id=tenant_id,
        text=params.get("q"),
        filters=Filters(
            collection=params.get("collection"),
            tags=(params["tag"],) if "tag" in params else (),
        ),
        sort=params.get("sort", "relevance"),
        limit=20,
    )


async def _run(docs: int, queries: int, seed: int) -> dict[str, Any]:
    import httpx

    from capstan.api.app import create_app
    from capstan.container import build_container
    from capstan.db.migrate import upgrade
    from capstan.search.elasticsearch import ElasticsearchEngine
    from capstan.search.reindex import reindex
    from capstan.settings import Settings

    backends = resolve_backends()
    es_url = os.environ.get("CAPSTAN_SEARCH_URL") or os.environ.get(
        "CAPSTAN_TEST_ELASTICSEARCH_URL"
    )
    if not es_url or not es_url.startswith("http"):
        raise BenchError("set CAPSTAN_TEST_ELASTICSEARCH_URL (scripts/services env prints it)")
    scratch = f"capstan_bench_{secrets.token_hex(4)}"
    url = with_database(backends.database_url, scratch)
    alias = f"bench-{secrets.token_hex(4)}"
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    err.print(f"scratch database {scratch} on {redact(url)}, index alias {alias}")
    await admin(backends.database_url, f'CREATE DATABASE "{scratch}"')
    container = None
    try:
        await upgrade(url)
        tenant_id, _key_id, key = await seed_tenant(url)
        insert_s = await _insert(url, tenant_id, docs, rng, vocab)
        settings = Settings(
            database_url=url,
            cache_url=backends.cache_url,
            search_url=es_url,
            search_index=alias,
            search_max_page_size=100,
            rate_limit_per_minute=10_000_000,
            rate_limit_burst=1_000_000,
            log_json=False,
            log_level="WARNING",
        )
        container = build_container(settings)
        await container.start()
        assert isinstance(container.search, ElasticsearchEngine)
        es = container.search
        await es.ensure()
        marks: list[tuple[float, int]] = []
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            marks.append((time.perf_counter(), done))
            err.print(f"indexed {done}/{total}", end="\r")

        report = await reindex(container.search, container.db, progress)
        err.print()
        reindex_s = time.perf_counter() - started
        backfill_s = marks[-1][0] - (started + es.alias_cache_seconds * 2)
        await es.refresh()

        app = create_app(settings, container)
        mix = _queries(rng, vocab, queries)
        latencies: dict[str, dict[str, list[float]]] = {}
        engines_seen: dict[str, set[str]] = {}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://bench",
            headers={"Authorization": f"Bearer {key}"},
        ) as client:
            for kind in MIX:
                for way in ("merged", "elasticsearch", "postgres"):
                    samples: list[float] = []
                    for params in mix[kind][:10]:  # warm-up
                        await _one(way, client, container, tenant_id, params, set())
                    seen: set[str] = set()
                    for params in mix[kind]:
                        t0 = time.perf_counter()
                        await _one(way, client, container, tenant_id, params, seen)
                        samples.append((time.perf_counter() - t0) * 1000)
                    latencies.setdefault(kind, {})[way] = samples
                    engines_seen[f"{kind}/{way}"] = seen
                    err.print(
                        f"{kind:13} {way:13} p50 {nearest_percentile(samples, 50):7.2f} ms  "
                        f"p99 {nearest_percentile(samples, 99):7.2f} ms"
                    )
        summary = {
            kind: {
                way: {
                    "p50_ms": round(nearest_percentile(s, 50), 2),
                    "p99_ms": round(nearest_percentile(s, 99), 2),
                    "mean_ms": round(statistics.fmean(s), 2),
                    "n": len(s),
                }
                for way, s in ways.items()
            }
            for kind, ways in latencies.items()
        }
        return {
            "benchmark": "search",
            "at": datetime.now(UTC).isoformat(),
            "commit": git_commit(),
            "params": {
                "documents": docs,
                "queries_per_kind": queries,
                "seed": seed,
                "page_size": 20,
                "analyzer": settings.search_analyzer,
            },
            "insert_seconds": round(insert_s, 2),
            "indexing": {
                "documents": report.documents,
                "backfill_seconds": round(backfill_s, 2),
                "docs_per_second": round(report.documents / backfill_s),
                "reindex_total_seconds": round(reindex_s, 2),
                "reindex_docs_per_second": round(report.documents / reindex_s),
            },
            "queries": summary,
            "engines": {k: sorted(v) for k, v in engines_seen.items()},
        }
    finally:
        if container is not None:
            es_ = container.search
            if isinstance(es_, ElasticsearchEngine):
                await es_.client.indices.delete(index=f"{alias}-*", ignore_unavailable=True)
            await container.close()
        await admin(backends.database_url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        err.print(f"dropped scratch database {scratch} and index {alias}-*")


async def _one(
    way: str, client: Any, container: Any, tenant_id: str, params: dict[str, Any], seen: set[str]
) -> None:
    if way == "merged":
        r = await client.get("/v1/search", params={**params, "limit": 20})
        if r.status_code != 200:
            raise BenchError(f"GET /v1/search answered {r.status_code}: {r.text[:200]}")
        body = r.json()
        seen.update(body["engines"])
        if body["degraded"]:
            raise BenchError("the merged answer was degraded: Elasticsearch did not answer")
    elif way == "elasticsearch":
        await container.search.query(_query(tenant_id, params))
        seen.add("elasticsearch")
    else:
        await container.searcher.database.query(_query(tenant_id, params))
        seen.add("postgres-fts")


def search_command(
    documents: Annotated[int, typer.Option(help="Documents to generate and index.")] = 100_000,
    queries: Annotated[int, typer.Option(help="Queries per kind and per way.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 1,
    output: Annotated[Path | None, typer.Option(help="JSON result file.")] = None,
) -> None:
    """Bulk-index N documents (docs/s) and time a query mix: merged API vs Elasticsearch vs
    PostgreSQL fallback (p50/p99)."""
    try:
        result = asyncio.run(_run(documents, queries, seed))
    except BenchError as exc:
        err.print(f"[red]bench search: {exc}[/red]")
        raise typer.Exit(2) from exc
    path = output or default_output("search", datetime.now(UTC))
    write_json(path, result)
    typer.echo(json.dumps({"indexing": result["indexing"], "queries": result["queries"]}, indent=2))
    err.print(f"results: {path}")
