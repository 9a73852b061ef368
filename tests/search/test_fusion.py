"""Reciprocal rank fusion: agreement beats a single top pick, order is deterministic."""

from __future__ import annotations

import pytest

from capstan.search.fusion import K, rrf


def test_k_is_sixty_and_scores_are_sums_of_reciprocal_ranks() -> None:
    fused = rrf({"keyword": ["a", "b"], "semantic": ["b", "c"]})
    by_id = {f.id: f for f in fused}
    assert K == 60
    assert by_id["b"].score == pytest.approx(1 / 62 + 1 / 61)
    assert by_id["a"].score == pytest.approx(1 / 61)
    assert by_id["c"].score == pytest.approx(1 / 62)
    assert by_id["b"].retrievers == ["keyword", "semantic"]
    assert by_id["b"].ranks == {"keyword": 2, "semantic": 1}
    assert by_id["c"].retrievers == ["semantic"]


def test_found_by_both_outranks_first_of_one() -> None:
    keyword = ["k1", "k2", "k3", "k4", "both"]
    semantic = ["s1", "s2", "s3", "s4", "both"]
    fused = rrf({"keyword": keyword, "semantic": semantic})
    assert fused[0].id == "both"  # 2/65 > 1/61


def test_ties_break_by_best_rank_then_list_order_then_id() -> None:
    fused = rrf({"keyword": ["a", "x"], "semantic": ["b", "y"]})
    # a and b both score 1/61: keyword was given first.
    assert [f.id for f in fused] == ["a", "b", "x", "y"]
    again = rrf({"keyword": ["a", "x"], "semantic": ["b", "y"]})
    assert [f.id for f in again] == [f.id for f in fused]


def test_duplicates_in_one_list_count_once_at_their_best_rank() -> None:
    fused = rrf({"semantic": ["a", "a", "b"]})
    assert [(f.id, f.ranks) for f in fused] == [("a", {"semantic": 1}), ("b", {"semantic": 3})]


def test_empty_lists_and_bad_k() -> None:
    assert rrf({"keyword": [], "semantic": []}) == []
    with pytest.raises(ValueError):
        rrf({"keyword": ["a"]}, k=-1)
