"""GET /v1/search: thin handler over SearchService (the merge rule is in search/service.py)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from capstan.api.deps import ContainerDep, PrincipalDep
from capstan.errors import InvalidInput
from capstan.search.port import Filters, SearchQuery
from capstan.storable import to_utc

router = APIRouter(prefix="/v1/search", tags=["search"])

METADATA_FIELD = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_TAGS = 20
MAX_METADATA_FILTERS = 10


class SearchHit(BaseModel):
    id: str
    title: str
    score: float | None = Field(None, description="relevance; null for structured queries")
    version: int
    highlights: list[str] = Field(default_factory=list, description="matches in <em>…</em>")
    match: Literal["all", "typo", "most"] | None = Field(
        None,
        description="the rule that let the hit in: every term matched (`all`), every term with "
        "some at one edit (`typo`), or the minimum-should-match count (`most`); null without q",
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
        description="counts over every match: `tags` and `collections` (top 20 each)"
    )
    took_ms: float
    engines: list[str] = Field(description="the engines that answered")
    degraded: bool = Field(description="true when Elasticsearch was down and PostgreSQL answered")
    next_cursor: str | None = None
    query: QueryInfo | None = Field(None, description="how `q` was understood; null without q")


def _utc(value: datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        return to_utc(value)
    except ValueError as exc:  # e.g. 0001-01-01T00:00+05:00 is before year 1 in UTC
        raise InvalidInput(f"{field}: {exc}", field=field) from exc


@router.get("", response_model=SearchResponse)
async def search(
    request: Request,
    c: ContainerDep,
    who: PrincipalDep,
    # Declared limits are the defaults of CAPSTAN_SEARCH_MAX_QUERY_CHARS and _MAX_PAGE_SIZE
    # (settings may lower them; the checks below enforce the configured values).
    q: Annotated[str | None, Query(max_length=500, description="full-text query")] = None,
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
    """Full text and structured filters, merged; `metadata.<field>=value` filters on metadata."""
    s = c.settings
    if q is not None and len(q) > s.search_max_query_chars:
        raise InvalidInput(f"q is longer than {s.search_max_query_chars} characters", field="q")
    if limit > s.search_max_page_size:
        raise InvalidInput(f"limit must be at most {s.search_max_page_size}", field="limit")
    tags = tuple(dict.fromkeys(t.strip() for t in tag or []))
    if any(not t or len(t) > 100 for t in tags):
        raise InvalidInput("each tag must be 1 to 100 characters", field="tag")
    metadata: list[tuple[str, str]] = []
    for key, value in request.query_params.multi_items():
        if not key.startswith("metadata."):
            continue
        name = key.removeprefix("metadata.")
        if not METADATA_FIELD.match(name):
            raise InvalidInput(
                "metadata filters look like metadata.<field>=value, field [A-Za-z0-9_-]{1,64}",
                field=key,
            )
        if len(value) > 200:
            raise InvalidInput("a metadata value is at most 200 characters", field=key)
        metadata.append((name, value))
    if len(metadata) > MAX_METADATA_FILTERS:
        raise InvalidInput(f"at most {MAX_METADATA_FILTERS} metadata filters", field="metadata")
    after = _utc(created_after, "created_after")
    before = _utc(created_before, "created_before")
    if after is not None and before is not None and after >= before:
        raise InvalidInput("created_after must be before created_before", field="created_after")
    query = SearchQuery(
        tenant_id=who.tenant_id,
        text=(q or "").strip() or None,
        filters=Filters(
            collection=collection,
            tags=tags,
            tags_mode=tags_mode,
            created_after=after,
            created_before=before,
            metadata=tuple(metadata),
        ),
        sort=sort,
        limit=limit,
        typos=typos,
    )
    page = await c.searcher.search(query, cursor)
    return SearchResponse(
        hits=[
            SearchHit(
                id=h.id,
                title=h.title,
                score=h.score,
                version=h.version,
                highlights=h.highlights,
                match=h.match,
            )
            for h in page.hits
        ],
        total=page.total,
        facets=page.facets,
        took_ms=page.took_ms,
        engines=page.engines,
        degraded=page.degraded,
        next_cursor=page.next_cursor,
        query=None if page.query is None else QueryInfo(**page.query),
    )
