"""Run the query sets against every engine and score them: recall@1/5/10 and MRR (within the
top 10) per engine and query set, zero-hit share, and top-5 agreement between engines (the same
documents in the top 5, in any order)."""

from __future__ import annotations

import itertools
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from capstan.db.dialect import dialect_for
from capstan_bench.relevance.corpus import CorpusDoc, Query, build_corpus, build_queries
from capstan_bench.relevance.engines import (
    Loaded,
    load_elasticsearch,
    load_postgres,
    load_sqlite,
)

K = 10
TARGETS = {"inflected": 0.90, "keywords": 0.95, "agreement": 0.90}
# The engines Capstan answers with; `elasticsearch-direct` is the baseline.
CAPSTAN_ENGINES = ("sqlite-fts5", "postgres-fts", "elasticsearch")


@dataclass(frozen=True, slots=True)
class Backends:
    postgres_url: str | None
    elasticsearch_url: str | None

    @classmethod
    def from_env(cls) -> Backends:
        env = os.environ
        pg = env.get("CAPSTAN_DATABASE_URL") or env.get("CAPSTAN_TEST_DATABASE_URL")
        if pg is not None and not _database_server(pg):
            pg = None  # a SQLite URL: the sqlite-fts5 engine runs anyway
        es = env.get("CAPSTAN_SEARCH_URL") or env.get("CAPSTAN_TEST_ELASTICSEARCH_URL")
        return cls(pg, es)


def _database_server(url: str) -> bool:
    try:
        return not dialect_for(url).is_file
    except ValueError:  # not a database URL Capstan knows
        return False


def score(ranked: Sequence[list[str]], queries: Sequence[Query]) -> dict[str, float]:
    ranks = [
        (found.index(q.expected) + 1 if q.expected in found else None)
        for found, q in zip(ranked, queries, strict=True)
    ]
    n = max(1, len(queries))

    def recall(k: int) -> float:
        return round(sum(1 for r in ranks if r is not None and r <= k) / n, 4)

    return {
        "recall@1": recall(1),
        "recall@5": recall(5),
        "recall@10": recall(10),
        "mrr": round(sum(1 / r for r in ranks if r is not None) / n, 4),
        "zero_hits": round(sum(1 for found in ranked if not found) / n, 4),
    }


def agreement(a: Sequence[list[str]], b: Sequence[list[str]]) -> float:
    same = sum(1 for x, y in zip(a, b, strict=True) if set(x[:5]) == set(y[:5]))
    return round(same / max(1, len(a)), 4)


async def evaluate(engines: Sequence[Loaded], sets: dict[str, list[Query]]) -> dict[str, Any]:
    """Scores per engine and query set, and pairwise top-5 agreement per query set."""
    answers: dict[str, dict[str, list[list[str]]]] = {}
    for engine in engines:
        answers[engine.name] = {
            name: [await engine.ask(q.text, K) for q in queries] for name, queries in sets.items()
        }
    scores = {e: {name: score(answers[e][name], sets[name]) for name in sets} for e in answers}
    pairs = {
        f"{a} / {b}": {name: agreement(answers[a][name], answers[b][name]) for name in sets}
        for a, b in itertools.combinations(answers, 2)
    }
    return {"scores": scores, "agreement_top5": pairs}


def verdicts(result: dict[str, Any]) -> list[tuple[str, bool]]:
    """Each target of the issue, and whether this run meets it."""
    out: list[tuple[str, bool]] = []
    scores = result["scores"]
    for e in (e for e in CAPSTAN_ENGINES if e in scores):
        for name, target in (
            ("inflected", TARGETS["inflected"]),
            ("keywords", TARGETS["keywords"]),
        ):
            got = scores[e][name]["recall@10"]
            out.append((f"{e} {name} recall@10 {got:.3f} >= {target}", got >= target))
        direct = scores.get("elasticsearch-direct")
        if direct is not None:
            for name in scores[e]:
                got, base = scores[e][name]["recall@10"], direct[name]["recall@10"]
                out.append((f"{e} {name} recall@10 {got:.3f} >= direct {base:.3f}", got >= base))
    for pair, per_set in result["agreement_top5"].items():
        if "direct" in pair:
            continue
        for name, got in per_set.items():
            if name == "sentences":
                continue
            ok = got >= TARGETS["agreement"]
            out.append((f"top-5 agreement {pair} {name} {got:.3f} >= 0.9", ok))
    return out


async def run(
    backends: Backends, *, per_set: int = 200, corpus: list[CorpusDoc] | None = None
) -> dict[str, Any]:
    """Build the corpus and queries, load every reachable engine, evaluate, clean up."""
    docs = corpus if corpus is not None else build_corpus()
    sets = build_queries(docs, per_set=per_set)
    engines: list[Loaded] = []
    skipped: dict[str, str] = {}
    try:
        engines.append(await load_sqlite(docs))
        if backends.postgres_url:
            engines.append(await load_postgres(backends.postgres_url, docs))
        else:
            skipped["postgres-fts"] = "no CAPSTAN_DATABASE_URL / CAPSTAN_TEST_DATABASE_URL"
        if backends.elasticsearch_url:
            engines += await load_elasticsearch(backends.elasticsearch_url, docs)
        else:
            skipped["elasticsearch"] = "no CAPSTAN_SEARCH_URL / CAPSTAN_TEST_ELASTICSEARCH_URL"
        result = await evaluate(engines, sets)
    finally:
        for engine in engines:
            await engine.close()
    result |= {
        "benchmark": "relevance",
        "corpus": {
            "source": "Python standard library docstrings",
            "python": platform.python_version(),
            "documents": len(docs),
        },
        "queries": {name: len(q) for name, q in sets.items()},
        "examples": {name: [q.text for q in qs[:3]] for name, qs in sets.items()},
        "skipped": skipped,
        "platform": sys.platform,
    }
    result["targets"] = [{"target": t, "met": ok} for t, ok in verdicts(result)]
    return result
