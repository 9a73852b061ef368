"""The search port: every full-text engine (Elasticsearch, PostgreSQL FTS, SQLite FTS5) answers
the same `SearchQuery` with the same `SearchResult`, and applies the tenant filter itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    from capstan.search.vectors import ChunkHit

Sort = Literal["relevance", "created", "updated"]
TagsMode = Literal["all", "any"]


class SearchUnavailable(Exception):
    """The full-text engine cannot be reached (or did not answer in time)."""


@dataclass(frozen=True, slots=True)
class IndexDoc:
    """A document as an index holds it (the row, at one version)."""

    id: str
    tenant_id: str
    collection: str
    title: str
    body: str
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Removal:
    """A deleted document: `version` is its last one; the tombstone outranks it."""

    tenant_id: str
    id: str
    version: int


@dataclass(frozen=True, slots=True)
class Filters:
    collection: str | None = None
    tags: tuple[str, ...] = ()
    tags_mode: TagsMode = "all"
    created_after: datetime | None = None
    created_before: datetime | None = None
    # (field, value as text): `metadata.lang=en` → ("lang", "en"); see metadata_text().
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return (
            self.collection is None
            and not self.tags
            and self.created_after is None
            and self.created_before is None
            and not self.metadata
        )


@dataclass(frozen=True, slots=True)
class SearchQuery:
    tenant_id: str
    text: str | None
    filters: Filters = field(default_factory=Filters)
    sort: Sort = "relevance"
    limit: int = 20
    # The sort key of the last hit already returned (engine-specific), or None.
    after: tuple[Any, ...] | None = None
    # How many hits were returned before (the fallback when `after` is another engine's key).
    offset: int = 0
    with_facets: bool = True
    with_highlights: bool = True
    # Typo tolerance: longer terms also match indexed terms one edit away (search/query.py).
    typos: bool = False
    # The idf of each ranked item (search/query.py) that the first page scored with, or None
    # to weigh them now. Later pages pass the first page's (a cursor carries them): documents
    # written in between change every idf, and a page scored on other numbers than its `after`
    # key would skip or repeat hits.
    weights: tuple[float, ...] | None = None


@dataclass(slots=True)
class Hit:
    id: str
    title: str
    score: float | None
    version: int
    highlights: list[str] = field(default_factory=list)
    # The engine's sort key for this hit: the next page starts after it.
    key: tuple[Any, ...] = ()
    # Which rule let it in (text queries): "all" terms, "typo" (all, some at one edit), "most"
    # (the minimum-should-match rule); see search/query.py.
    match: str | None = None
    # The retrievers that found it ("keyword", "semantic"), set by the search service.
    retrievers: list[str] = field(default_factory=list)
    # The best-matching chunk when the semantic retriever found it (search/vectors.ChunkHit).
    chunk: ChunkHit | None = None


@dataclass(slots=True)
class SearchResult:
    hits: list[Hit]
    total: int
    facets: dict[str, dict[str, int]] = field(default_factory=dict)
    more: bool = False
    # The idfs this page scored with (empty for structured queries): the next page's `weights`.
    weights: tuple[float, ...] = ()


@dataclass(slots=True)
class IndexReport:
    """What one batch did: applied, stale (a newer version was already there), failed."""

    applied: int = 0
    stale: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # document id → reason


class SearchEngine(Protocol):
    name: str
    # True when the index is a separate store fed by the indexer (Elasticsearch); False when
    # the database maintains it in the write transaction (PostgreSQL FTS, SQLite FTS5).
    derived: ClassVar[bool]

    async def ping(self) -> None: ...

    async def index(self, docs: Sequence[IndexDoc]) -> IndexReport:
        """Upsert documents; a version at or below the indexed one is stale, not an error."""
        ...

    async def delete(self, removals: Sequence[Removal]) -> IndexReport:
        """Remove documents so that no version up to `version` can come back."""
        ...

    async def query(self, q: SearchQuery) -> SearchResult: ...

    async def refresh(self) -> None:
        """Make every acknowledged change visible to queries (tests, reindex)."""
        ...

    async def close(self) -> None: ...


def metadata_text(value: Any) -> str | None:
    """The text a metadata filter compares with: strings as they are, numbers and booleans as
    JSON writes them; None for values that cannot be filtered (objects, arrays, null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        import json

        return json.dumps(value)
    return None
