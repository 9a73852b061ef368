"""Reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): merge ranked lists by
rank alone, so scores of different kinds (keyword relevance, cosine similarity) never have to
be made comparable.

    score(d) = Σ over the lists that contain d of 1 / (k + rank of d in that list)

with ranks from 1 and k = 60 (the paper's constant, also Elasticsearch's and OpenSearch's
default): a document first in one list and absent from the other scores 1/61 ≈ 0.0164, one
fifth in both 2/65 ≈ 0.0308, so agreement between retrievers beats one retriever's top pick.
Ties break by the best single rank, then by the order of the lists given, then by id, so the
same inputs always give the same order.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = 60

Id = TypeVar("Id", bound=Hashable)


@dataclass(slots=True)
class Fused(Generic[Id]):
    id: Id
    score: float
    # {retriever name: rank in its list, from 1}, in the order the lists were given.
    ranks: dict[str, int] = field(default_factory=dict)

    @property
    def retrievers(self) -> list[str]:
        return list(self.ranks)


def rrf(lists: Mapping[str, Sequence[Id]], k: int = K) -> list[Fused[Id]]:
    """Every id of every list, best fused score first (duplicates within a list count once,
    at their best rank)."""
    if k < 0:
        raise ValueError(f"k must be at least 0 (got {k})")
    fused: dict[Id, Fused[Id]] = {}
    order = list(lists)
    for name in order:
        for rank, id_ in enumerate(lists[name], start=1):
            entry = fused.get(id_)
            if entry is None:
                entry = fused[id_] = Fused(id_, 0.0)
            if name in entry.ranks:
                continue
            entry.ranks[name] = rank
            entry.score += 1.0 / (k + rank)

    def key(f: Fused[Id]) -> tuple[float, int, int, str]:
        best = min(f.ranks.values())
        first_list = min(order.index(n) for n in f.ranks)
        return (-f.score, best, first_list, str(f.id))

    return sorted(fused.values(), key=key)
