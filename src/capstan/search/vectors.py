"""The vector port (issue 16): every vector store (Elasticsearch `dense_vector`, pgvector, the
database's exact store for SQLite; docs/embeddings.md) keeps the embedded chunks of each live
document and answers a nearest-neighbour query with the tenant filter and the structured
filters applied *inside* the query, never after it, so a filtered query still returns its
`limit` best matches.

Vectors live in a *space*: one embedding model at one version, with its dimension. A vector is
comparable only with vectors of the same space, so a model change builds a new space next to the
live one (re-embedding in the background) and switches queries to it when it is complete: the
same zero-downtime pattern as `capstan search reindex`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from capstan.search.port import Filters, IndexReport, Removal


class VectorsUnavailable(Exception):
    """The vector store cannot be reached (or did not answer in time)."""


class VectorDimensionError(ValueError):
    """A vector whose length is not its space's dimension (a model mix-up): refused before
    anything is written or searched."""


def check_dimension(space: Space, vector: Sequence[float], what: str) -> None:
    if len(vector) != space.dimension:
        raise VectorDimensionError(
            f"{what} has {len(vector)} dimensions but space {space.model}@{space.version} "
            f"holds {space.dimension}: vectors of different models cannot be compared"
        )


@dataclass(frozen=True, slots=True)
class Space:
    """One embedding model at one version: `key` names it in storage (index, table, column)."""

    model: str
    version: str
    dimension: int

    @property
    def key(self) -> str:
        """A storage-safe name, stable for the same (model, version, dimension)."""
        import hashlib

        digest = hashlib.sha256(f"{self.model}\0{self.version}".encode()).hexdigest()[:10]
        return f"d{self.dimension}_{digest}"


@dataclass(frozen=True, slots=True)
class ChunkVector:
    """One chunk of a document with its vector (unit length, `space.dimension` floats)."""

    index: int  # its position in the document, from 0
    start: int  # offsets into the text that was chunked (title + body, see docs/embeddings.md)
    end: int
    text: str
    vector: Sequence[float]


@dataclass(frozen=True, slots=True)
class DocumentVectors:
    """Every chunk of one document at one version, with what the filters need."""

    tenant_id: str
    document_id: str
    version: int
    collection: str
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    created_at: datetime
    chunks: tuple[ChunkVector, ...]


@dataclass(frozen=True, slots=True)
class VectorQuery:
    tenant_id: str
    vector: Sequence[float]
    filters: Filters = field(default_factory=Filters)
    # Documents wanted: the best chunk of each of the `limit` nearest documents.
    limit: int = 20


@dataclass(slots=True)
class ChunkHit:
    """The best-matching chunk of one document; `score` is the cosine similarity in [-1, 1]."""

    document_id: str
    version: int
    chunk: int
    start: int
    end: int
    text: str
    score: float


class VectorStore(Protocol):
    name: str
    # True when the store is separate from the database and fed asynchronously (Elasticsearch).
    derived: ClassVar[bool]

    async def ping(self) -> None: ...

    async def ensure_space(self, space: Space) -> None:
        """Create what holds the vectors of `space` (idempotent)."""
        ...

    async def drop_space(self, space: Space) -> None:
        """Remove every vector of `space` (after a model change has switched away from it)."""
        ...

    async def upsert(self, space: Space, docs: Sequence[DocumentVectors]) -> IndexReport:
        """Replace all chunks of each document; a version below the stored one is stale, not
        an error (the same version again is applied: re-embedding rewrites it)."""
        ...

    async def delete(self, space: Space, removals: Sequence[Removal]) -> IndexReport:
        """Remove every chunk of each document, so that no version up to `version` returns."""
        ...

    async def query(self, space: Space, q: VectorQuery) -> list[ChunkHit]:
        """The `q.limit` nearest documents of the tenant that match `q.filters`, best first,
        each with its best chunk."""
        ...

    async def versions(
        self, space: Space, tenant_id: str | None = None
    ) -> dict[tuple[str, str], int]:
        """{(tenant_id, document_id): version} of every document stored in `space` (the drift
        check compares it with the database's live documents)."""
        ...

    async def refresh(self) -> None:
        """Make every acknowledged change visible to queries (tests, re-embedding)."""
        ...

    async def close(self) -> None: ...
