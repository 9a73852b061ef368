"""Relevance on a real-text corpus (the standard library's docstrings, built at run time): an
inflected keyword query finds the document it was made from, and the engines rank alike."""

from __future__ import annotations

import pytest

from capstan_bench.relevance.run import Backends, run
from tests.conftest import service_url

QUERIES = 60


async def test_embedded_search_finds_inflected_and_partial_queries() -> None:
    result = await run(Backends(None, None), per_set=QUERIES)
    scores = result["scores"]["sqlite-fts5"]
    assert scores["inflected"]["recall@10"] >= 0.9, scores
    assert scores["keywords"]["recall@10"] >= 0.9, scores
    assert scores["absent_word"]["recall@10"] >= 0.85, scores
    assert scores["sentences"]["recall@1"] >= 0.85, scores


@pytest.mark.postgres
@pytest.mark.elasticsearch
async def test_the_three_engines_agree_and_beat_a_plain_or_query() -> None:
    result = await run(
        Backends(service_url("postgres"), service_url("elasticsearch")), per_set=QUERIES
    )
    scores = result["scores"]
    for engine in ("sqlite-fts5", "postgres-fts", "elasticsearch"):
        assert scores[engine]["inflected"]["recall@10"] >= 0.9, (engine, scores[engine])
        for name, direct in scores["elasticsearch-direct"].items():
            assert scores[engine][name]["recall@10"] >= direct["recall@10"], (engine, name)
    for pair, per_set in result["agreement_top5"].items():
        if "direct" not in pair:
            assert per_set["keywords"] >= 0.9, (pair, per_set)
            assert per_set["inflected"] >= 0.9, (pair, per_set)
