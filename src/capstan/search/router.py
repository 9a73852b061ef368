"""GET and POST /v1/search, POST /v1/retrieve: thin handlers over SearchService (the merge
rule and the modes are in search/service.py)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from capstan.api.deps import ContainerDep, PrincipalDep
from capstan.errors import InvalidInput
from capstan.search.port import Filters, SearchQuery, metadata_text
from capstan.search.service import SearchPage
from capstan.settings import Settings
from capstan.storable import to_utc

router = APIRouter(tags=["search"])

METADATA_FIELD = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_TAGS = 20
MAX_METADATA_FILTERS = 10
Mode = Literal["keyword", "semantic", "hybrid"]
MODE_DOC = (
    "keyword (words), semantic (meaning: the nearest chunks' documents) or hybrid (both, fused "
    "by reciprocal rank, k=60); default: hybrid when the tenant has embeddings, else keyword"
)


class ChunkInfo(BaseModel):
    index: int = Field(description="the chunk's position in the document, from 0")
    start: int = Field(description="offset into title + blank line + body (docs/embeddings.md)")
    end: int
    text: str
    score: float = Field(description="cosine similarity to the query")


class SearchHit(BaseModel):
    id: str
    title: str
    score: float | None = Field(
        None,
        description="keyword: relevance; semantic: cosine similarity; hybrid: the fused "
        "reciprocal-rank score; null for structured queries",
    )
    version: int
    highlights: list[str] = Field(default_factory=list, description="matches in <em>…</em>")
    match: Literal["all", "typo", "most"] | None = Field(
        None,
        description="the rule that let the hit in: every term matched (`all`), every term with "
        "some at one edit (`typo`), or the minimum-should-match count (`most`); null without q "
        "or when only the semantic retriever found it",
    )
    retrievers: list[Literal["keyword", "semantic"]] = Field(
        default_factory=list, description="the retrievers that found this document"
    )
    chunk: ChunkInfo | None = Field(
        None, description="the best-matching chunk, when the semantic retriever found it"
    )


class QueryInfo(BaseModel):
    terms: list[str] = Field(description="the analyzed terms (stemmed, folded)")
    phrases: list[str]
    excluded: list[str]
    min_should_match: int = Field(description="how many terms a hit must match at least")
    typos: bool


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    total: int
    facets: dict[str, dict[str, int]] = Field(
        description="counts over every keyword match: `tags` and `collections` (top 20 each)"
    )
    took_ms: float
    mode: Mode = Field(description="the mode that answered")
    engines: list[str] = Field(description="the engines that answered")
    degraded: bool = Field(
        description="true when an engine was down: PostgreSQL answered for Elasticsearch, or "
        "keywords alone for a semantic or hybrid query"
    )
    next_cursor: str | None = None
    query: QueryInfo | None = Field(None, description="how `q` was understood; null without q")


class FilterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str | None = Field(None, min_length=1, max_length=100)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    tags_mode: Literal["all", "any"] = "all"
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="top-level metadata values, compared as text"
    )


class SearchBody(FilterBody):
    q: str | None = Field(None, description="the query (up to CAPSTAN_SEARCH_MAX_BODY_QUERY_CHARS)")
    mode: Mode | None = Field(None, description=MODE_DOC)
    sort: Literal["relevance", "created", "updated"] = "relevance"
    limit: int = Field(20, ge=1)
    cursor: str | None = Field(None, max_length=1000)
    typos: bool = False


class RetrieveBody(FilterBody):
    query: str = Field(..., min_length=1, description="what to find chunks for")
    limit: int = Field(8, ge=1, le=50, description="chunks wanted (one per document)")


class RetrievedChunk(BaseModel):
    document_id: str
    title: str
    version: int
    chunk: ChunkInfo


class SpaceInfo(BaseModel):
    model: str
    version: str
    dimension: int


class RetrieveResponse(BaseModel):
    chunks: list[RetrievedChunk] = Field(description="best first, at most one per document")
    space: SpaceInfo = Field(description="the embedding model the vectors came from")
    engines: list[str]
    degraded: bool
    took_ms: float


def _utc(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        return to_utc(value)
    except ValueError as exc:  # e.g. 0001-01-01T00:00+05:00 is before year 1 in UTC
        raise InvalidInput(f"{field}: {exc}", field=field) from exc


def _filters(
    collection: str | None,
    tags_in: list[str],
    tags_mode: Literal["all", "any"],
    created_after: datetime | None,
    created_before: datetime | None,
    metadata_in: list[tuple[str, str]],
    prefix: str,
) -> Filters:
    tags = tuple(dict.fromkeys(t.strip() for t in tags_in))
    if any(not t or len(t) > 100 for t in tags):
        raise InvalidInput("each tag must be 1 to 100 characters", field=f"{prefix}tag")
    for name, value in metadata_in:
        key = f"metadata.{name}"
        if not METADATA_FIELD.match(name):
            raise InvalidInput(
                "metadata filters look like metadata.<field>=value, field [A-Za-z0-9_-]{1,64}",
                field=key,
            )
        if len(value) > 200:
            raise InvalidInput("a metadata value is at most 200 characters", field=key)
    if len(metadata_in) > MAX_METADATA_FILTERS:
        raise InvalidInput(f"at most {MAX_METADATA_FILTERS} metadata filters", field="metadata")
    after = _utc(created_after, "created_after")
    before = _utc(created_before, "created_before")
    if after is not None and before is not None and after >= before:
        raise InvalidInput("created_after must be before created_before", field="created_after")
    return Filters(
        collection=collection,
        tags=tags,
        tags_mode=tags_mode,
        created_after=after,
        created_before=before,
        metadata=tuple(metadata_in),
    )


def _body_filters(body: FilterBody) -> Filters:
    metadata: list[tuple[str, str]] = []
    for name, value in body.metadata.items():
        text = metadata_text(value)
        assert text is not None  # the model admits scalars only
        metadata.append((name, text))
    return _filters(
        body.collection,
        body.tags,
        body.tags_mode,
        body.created_after,
        body.created_before,
        metadata,
        "",
    )


def _check_limits(s: Settings, q: str | None, limit: int, max_chars: int) -> None:
    if q is not None and len(q) > max_chars:
        raise InvalidInput(f"q is longer than {max_chars} characters", field="q")
    if limit > s.search_max_page_size:
        raise InvalidInput(f"limit must be at most {s.search_max_page_size}", field="limit")


def _chunk_info(chunk: Any) -> ChunkInfo | None:
    if chunk is None:
        return None
    return ChunkInfo(
        index=chunk.chunk,
        start=chunk.start,
        end=chunk.end,
        text=chunk.text,
        score=round(chunk.score, 6),
    )


def _response(page: SearchPage) -> SearchResponse:
    return SearchResponse(
        hits=[
            SearchHit(
                id=h.id,
                title=h.title,
                score=h.score,
                version=h.version,
                highlights=h.highlights,
                match=h.match,
                retrievers=h.retrievers,
                chunk=_chunk_info(h.chunk),
            )
            for h in page.hits
        ],
        total=page.total,
        facets=page.facets,
        took_ms=page.took_ms,
        mode=page.mode,
        engines=page.engines,
        degraded=page.degraded,
        next_cursor=page.next_cursor,
        query=None if page.query is None else QueryInfo(**page.query),
    )


@router.get("/v1/search", response_model=SearchResponse)
async def search(
    request: Request,
    c: ContainerDep,
    who: PrincipalDep,
    # Declared limits are the defaults of CAPSTAN_SEARCH_MAX_QUERY_CHARS and _MAX_PAGE_SIZE
    # (settings may lower them; the checks below enforce the configured values).
    q: Annotated[str | None, Query(max_length=500, description="full-text query")] = None,
    mode: Annotated[Mode | None, Query(description=MODE_DOC)] = None,
    collection: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    tag: Annotated[list[str] | None, Query(max_length=MAX_TAGS)] = None,
    tags_mode: Literal["all", "any"] = "all",
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    sort: Literal["relevance", "created", "updated"] = "relevance",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
    typos: Annotated[
        bool, Query(description="also match longer words at one edit (ranked below exact)")
    ] = False,
) -> SearchResponse:
    """Full text, meaning and structured filters; `metadata.<field>=value` filters metadata."""
    s = c.settings
    _check_limits(s, q, limit, s.search_max_query_chars)
    metadata = [
        (key.removeprefix("metadata."), value)
        for key, value in request.query_params.multi_items()
        if key.startswith("metadata.")
    ]
    filters = _filters(
        collection, tag or [], tags_mode, created_after, created_before, metadata, ""
    )
    query = SearchQuery(
        tenant_id=who.tenant_id,
        text=(q or "").strip() or None,
        filters=filters,
        sort=sort,
        limit=limit,
        typos=typos,
    )
    return _response(await c.searcher.search(query, cursor, mode))


@router.post("/v1/search", response_model=SearchResponse)
async def search_body(body: SearchBody, c: ContainerDep, who: PrincipalDep) -> SearchResponse:
    """GET /v1/search with a JSON body, for queries too long for a URL."""
    s = c.settings
    _check_limits(s, body.q, body.limit, s.search_max_body_query_chars)
    query = SearchQuery(
        tenant_id=who.tenant_id,
        text=(body.q or "").strip() or None,
        filters=_body_filters(body),
        sort=body.sort,
        limit=body.limit,
        typos=body.typos,
    )
    return _response(await c.searcher.search(query, body.cursor, body.mode))


@router.post("/v1/retrieve", response_model=RetrieveResponse)
async def retrieve(body: RetrieveBody, c: ContainerDep, who: PrincipalDep) -> RetrieveResponse:
    """The chunks nearest in meaning to `query`, with their text, for a RAG prompt."""
    s = c.settings
    if len(body.query) > s.search_max_body_query_chars:
        raise InvalidInput(
            f"query is longer than {s.search_max_body_query_chars} characters", field="query"
        )
    found = await c.searcher.retrieve(who.tenant_id, body.query, _body_filters(body), body.limit)
    return RetrieveResponse(
        chunks=[
            RetrievedChunk(
                document_id=hit.document_id,
                title=title,
                version=version,
                chunk=ChunkInfo(
                    index=hit.chunk,
                    start=hit.start,
                    end=hit.end,
                    text=hit.text,
                    score=round(hit.score, 6),
                ),
            )
            for hit, (version, title) in found.hits
        ],
        space=SpaceInfo(
            model=found.space.model, version=found.space.version, dimension=found.space.dimension
        ),
        engines=[found.store],
        degraded=found.degraded,
        took_ms=found.took_ms,
    )
