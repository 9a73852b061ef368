"""The search flow: Elasticsearch ranks, the database decides, the API merges.

Merge rule (docs/search.md):

- **Text query, Elasticsearch up.** Elasticsearch applies the tenant and every filter it holds
  and returns candidates in relevance (or date) order with highlights. The database then checks
  the candidates against the same structured predicates (`verify`): a candidate kept must exist
  in the tenant now and match every filter. The page keeps Elasticsearch's order, the title and
  version come from the database (the source of truth), highlights from Elasticsearch. If the
  check drops candidates (index lag), the next candidates are fetched, up to three rounds.
  `engines = ["elasticsearch", "postgresql"]`.
- **No text.** A pure structured query: the database answers, sorted by the chosen field
  (`relevance` means `created`). `engines = ["postgresql"]` (or `["sqlite"]`).
- **Elasticsearch down or slow** (no answer within `search_timeout_seconds`): the database's
  full-text engine answers the same query, `degraded: true`, `engines = ["postgres-fts"]`;
  Elasticsearch is not tried again for `search_retry_seconds`.
- **Embedded.** SQLite FTS5 answers text queries, `engines = ["sqlite-fts5"]`.

Modes (`mode`, issue 16): `keyword` is the flow above; `semantic` ranks by the vector store
(search/semantic.py), candidates checked by the database like Elasticsearch's; `hybrid` runs
both and fuses them by reciprocal rank (search/fusion.py, k = 60). With no mode, a text query
is hybrid when the tenant has vectors in the live space, else keyword; `mode` in the response
says which answered. If no vector store answers, the keyword flow answers, `degraded: true`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from capstan.embeddings.port import EmbeddingInputError
from capstan.errors import InvalidInput, Unavailable
from capstan.observability.metrics import Metrics
from capstan.search.fusion import K, rrf
from capstan.search.port import (
    Filters,
    Hit,
    SearchEngine,
    SearchQuery,
    SearchResult,
    SearchUnavailable,
)
from capstan.search.query import parse
from capstan.search.semantic import VectorAnswer, VectorSearch
from capstan.search.sql import DatabaseSearch
from capstan.search.vectors import ChunkHit, Space, VectorsUnavailable

log = logging.getLogger(__name__)

MAX_ROUNDS = 3
Mode = Literal["keyword", "semantic", "hybrid"]
# Each retriever's candidates that hybrid fuses: enough that a document ranked low by one and
# high by the other still surfaces on the first page.
HYBRID_DEPTH = 50


@dataclass(slots=True)
class SearchPage:
    hits: list[Hit]
    total: int
    facets: dict[str, dict[str, int]]
    engines: list[str]
    degraded: bool
    took_ms: float
    next_cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # How the text was understood (terms, phrases, exclusions, min_should_match); None without.
    query: dict[str, Any] | None = None
    # The mode that answered: keyword, semantic or hybrid.
    mode: Mode = "keyword"


def _drop(task: asyncio.Task[Any]) -> None:
    """Cancel a task whose answer is no longer wanted, retrieving any error it ended with."""
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


@dataclass(slots=True)
class Retrieved:
    hits: list[tuple[ChunkHit, tuple[int, str]]]  # (chunk, (version, title)), best first
    space: Space
    store: str
    degraded: bool
    took_ms: float


def _fingerprint(q: SearchQuery) -> str:
    raw = json.dumps([q.text or "", repr(q.filters), q.sort, q.typos], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def encode_cursor(
    q: SearchQuery, engine: str, key: tuple[Any, ...], offset: int, weights: tuple[float, ...]
) -> str:
    raw = json.dumps(
        {"e": engine, "k": list(key), "o": offset, "f": _fingerprint(q), "w": list(weights)},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, q: SearchQuery) -> tuple[str, SearchQuery]:
    """The engine that issued a cursor, and `q` continued after it (key, offset and the first
    page's weights); InvalidInput if it is not one issued for `q`."""
    bad = InvalidInput("the cursor is not one this API returned for this query", field="cursor")
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise bad from exc
    if not isinstance(raw, dict) or set(raw) != {"e", "k", "o", "f", "w"}:
        raise bad
    engine, key, offset, fp, weights = raw["e"], raw["k"], raw["o"], raw["f"], raw["w"]
    text = (q.text or "").strip()
    if (
        not isinstance(engine, str)
        or not isinstance(key, list)
        or len(key) != 2
        or not all(isinstance(k, str | int | float) for k in key)
        or not isinstance(offset, int)
        or offset < 0
        or fp != _fingerprint(q)
        or not isinstance(weights, list)
        or not all(isinstance(w, int | float) and w >= 0 for w in weights)
        or len(weights) != (len(parse(text, typos=q.typos).ranked()) if text else 0)
    ):
        raise bad
    return engine, replace(
        q,
        after=tuple(key),
        offset=offset,
        weights=tuple(float(w) for w in weights) if text else None,
    )


class SearchService:
    def __init__(
        self,
        database: DatabaseSearch,
        index: SearchEngine | None,
        metrics: Metrics,
        *,
        timeout_seconds: float = 1.0,
        retry_seconds: float = 2.0,
        vectors: VectorSearch | None = None,
    ) -> None:
        self.database = database
        self.index = index
        self.vectors = vectors
        self._metrics = metrics
        self._timeout = timeout_seconds
        self._retry = retry_seconds
        self._index_down_until = 0.0

    def _label(self, engine: str) -> str:
        return {"postgres-fts": "postgres", "sqlite-fts5": "sqlite"}.get(engine, engine)

    async def search(
        self, q: SearchQuery, cursor: str | None = None, mode: Mode | None = None
    ) -> SearchPage:
        """One page in `mode` (None: hybrid when the tenant has embeddings, else keyword)."""
        text = (q.text or "").strip()
        if mode is None and (not text or self.vectors is None or cursor is not None):
            mode = "keyword"
        if mode == "keyword":
            page = await self._keyword(q, cursor)
            for hit in page.hits:
                hit.retrievers = ["keyword"] if text else []
            return page
        if not text:
            raise InvalidInput(f"mode={mode} needs a text query (q)", field="q")
        if self.vectors is None:
            raise InvalidInput(
                f"mode={mode or 'hybrid'} needs embeddings, which this server has turned off "
                "(CAPSTAN_EMBEDDINGS_ENABLED)",
                field="mode",
            )
        if cursor is not None:
            raise InvalidInput(
                "semantic and hybrid results come as one page (raise limit): no cursor",
                field="cursor",
            )
        if q.sort != "relevance":
            raise InvalidInput(f"mode={mode} ranks by relevance only", field="sort")
        return await self._with_vectors(q, mode)

    async def _with_vectors(self, q: SearchQuery, mode: Mode | None) -> SearchPage:
        assert self.vectors is not None
        started = time.perf_counter()
        text = (q.text or "").strip()
        depth = max(q.limit, HYBRID_DEPTH) if mode != "semantic" else q.limit
        keyword: asyncio.Task[SearchPage] | None = None
        if mode != "semantic":
            keyword = asyncio.create_task(self._keyword(replace(q, limit=min(depth, 100)), None))
        try:
            answer: VectorAnswer | None = await self.vectors.search(
                q.tenant_id, text, q.filters, depth, check_tenant=mode is None
            )
        except EmbeddingInputError as exc:
            if keyword is not None:
                _drop(keyword)
            raise InvalidInput(f"q cannot be embedded: {exc}", field="q") from exc
        except VectorsUnavailable as exc:
            self._metrics.search_requests.labels("vectors", "unavailable").inc()
            log.warning(
                "vector search unavailable, answering with keywords", extra={"error": str(exc)}
            )
            answer = None
        if answer is None or (mode is None and answer.has_embeddings is False):
            # The keyword flow as asked (its own page size, so its cursor pages on): the
            # candidates fetched for fusion are `depth` deep.
            if keyword is not None and depth == q.limit:
                page = await keyword
            else:
                if keyword is not None:
                    _drop(keyword)
                page = await self._keyword(q, None)
            for hit in page.hits:
                hit.retrievers = ["keyword"]
            page.degraded = page.degraded or answer is None
            page.took_ms = round((time.perf_counter() - started) * 1000, 2)
            return page
        semantic = await self._verified(q, answer.hits)
        if mode == "semantic":
            hits = []
            for chunk_hit, (version, title) in semantic:
                hits.append(
                    Hit(
                        id=chunk_hit.document_id,
                        title=title,
                        score=round(chunk_hit.score, 6),
                        version=version,
                        key=(),
                        retrievers=["semantic"],
                        chunk=chunk_hit,
                    )
                )
            page = SearchPage(
                hits=hits[: q.limit],
                total=len(hits),
                facets={},
                engines=[answer.store],
                degraded=answer.degraded,
                took_ms=0.0,
                mode="semantic",
            )
        else:
            assert keyword is not None
            page = self._fuse(q, await keyword, semantic, answer)
        page.took_ms = round((time.perf_counter() - started) * 1000, 2)
        page.query = parse(text, typos=q.typos).describe()
        label = "hybrid" if page.mode == "hybrid" else "semantic"
        self._metrics.search_duration.labels(label).observe(time.perf_counter() - started)
        self._metrics.search_requests.labels(label, "degraded" if page.degraded else "ok").inc()
        return page

    async def retrieve(self, tenant_id: str, text: str, filters: Filters, limit: int) -> Retrieved:
        """The `limit` chunks nearest to `text` (one per document), checked by the database."""
        started = time.perf_counter()
        if self.vectors is None:
            raise InvalidInput(
                "retrieval needs embeddings, which this server has turned off "
                "(CAPSTAN_EMBEDDINGS_ENABLED)",
                field="query",
            )
        q = SearchQuery(tenant_id=tenant_id, text=text, filters=filters, limit=limit)
        try:
            answer = await self.vectors.search(tenant_id, text, filters, limit, check_tenant=False)
        except EmbeddingInputError as exc:
            raise InvalidInput(f"query cannot be embedded: {exc}", field="query") from exc
        except VectorsUnavailable as exc:
            self._metrics.search_requests.labels("vectors", "unavailable").inc()
            raise Unavailable("no vector store can answer now", retry_after=1) from exc
        hits = await self._verified(q, answer.hits)
        took = round((time.perf_counter() - started) * 1000, 2)
        return Retrieved(hits, answer.space, answer.store, answer.degraded, took)

    async def _verified(
        self, q: SearchQuery, hits: list[ChunkHit]
    ) -> list[tuple[ChunkHit, tuple[int, str]]]:
        """The hits whose documents exist in the tenant now and match the filters (the store
        may lag behind a delete), with the database's version and title."""
        if not hits:
            return []
        try:
            found = await self.database.verify(
                q.tenant_id, [h.document_id for h in hits], q.filters
            )
        except Exception as exc:
            raise Unavailable("the database cannot answer searches now", retry_after=1) from exc
        return [(h, found[h.document_id]) for h in hits if h.document_id in found]

    def _fuse(
        self,
        q: SearchQuery,
        keyword: SearchPage,
        semantic: list[tuple[ChunkHit, tuple[int, str]]],
        answer: VectorAnswer,
    ) -> SearchPage:
        by_id = {h.id: h for h in keyword.hits}
        chunks = {c.document_id: (c, row) for c, row in semantic}
        fused = rrf(
            {
                "keyword": [h.id for h in keyword.hits],
                "semantic": [c.document_id for c, _ in semantic],
            },
            k=K,
        )
        hits: list[Hit] = []
        for f in fused[: q.limit]:
            hit = by_id.get(f.id)
            if hit is None:
                _, (version, title) = chunks[f.id]
                hit = Hit(id=f.id, title=title, score=None, version=version)
            hit.score = f.score
            hit.key = ()
            hit.retrievers = f.retrievers
            if f.id in chunks:
                hit.chunk = chunks[f.id][0]
            hits.append(hit)
        return SearchPage(
            hits=hits,
            total=len(fused),
            facets=keyword.facets,
            engines=[*keyword.engines, answer.store],
            degraded=keyword.degraded or answer.degraded,
            took_ms=0.0,
            mode="hybrid",
        )

    async def _keyword(self, q: SearchQuery, cursor: str | None) -> SearchPage:
        started = time.perf_counter()
        cursor_engine: str | None = None
        if cursor is not None:
            cursor_engine, q = decode_cursor(cursor, q)
        text = (q.text or "").strip()
        page: SearchPage
        if text and self.index is not None and time.monotonic() >= self._index_down_until:
            try:
                page = await self._merged(q, cursor_engine)
            except (SearchUnavailable, TimeoutError) as exc:
                self._index_down_until = time.monotonic() + self._retry
                self._metrics.search_requests.labels("elasticsearch", "unavailable").inc()
                log.warning(
                    "elasticsearch unavailable, answering from the database",
                    extra={"error": str(exc) or type(exc).__name__},
                )
                page = await self._database(q, cursor_engine, degraded=True)
        else:
            page = await self._database(
                q, cursor_engine, degraded=bool(text and self.index is not None)
            )
        if text:
            page.query = parse(text, typos=q.typos).describe()
        page.took_ms = round((time.perf_counter() - started) * 1000, 2)
        label = "merged" if len(page.engines) > 1 else self._label(page.engines[0])
        self._metrics.search_duration.labels(label).observe(time.perf_counter() - started)
        self._metrics.search_requests.labels(label, "degraded" if page.degraded else "ok").inc()
        return page

    async def _database(
        self, q: SearchQuery, cursor_engine: str | None, *, degraded: bool
    ) -> SearchPage:
        db = self.database
        text = (q.text or "").strip()
        engine = db.name if text else db.store
        if cursor_engine is not None and cursor_engine != engine:
            q = replace(q, after=None)  # another engine's key: continue by position
        started = time.perf_counter()
        try:
            result = await db.query(q)
        except SearchUnavailable as exc:
            raise Unavailable("the database cannot answer searches now", retry_after=1) from exc
        self._metrics.search_duration.labels(self._label(engine)).observe(
            time.perf_counter() - started
        )
        return self._page(q, result, [engine], engine, degraded)

    async def _merged(self, q: SearchQuery, cursor_engine: str | None) -> SearchPage:
        assert self.index is not None
        index, db = self.index, self.database
        if cursor_engine is not None and cursor_engine != index.name:
            q = replace(q, after=None)
        collected: list[Hit] = []
        total, facets, more = 0, {}, False
        after, offset, weights = q.after, q.offset, q.weights
        last_key: tuple[Any, ...] | None = None
        examined = 0
        for round_ in range(MAX_ROUNDS):
            ask = replace(
                q,
                after=after,
                offset=offset if after is None else 0,
                with_facets=q.with_facets and round_ == 0,
                weights=weights,
            )
            started = time.perf_counter()
            result = await asyncio.wait_for(index.query(ask), self._timeout)
            self._metrics.search_duration.labels("elasticsearch").observe(
                time.perf_counter() - started
            )
            if round_ == 0:  # later rounds (and pages) rank with this round's weights
                total, facets, weights = result.total, result.facets, result.weights
            started = time.perf_counter()
            try:
                found = await db.verify(q.tenant_id, [h.id for h in result.hits], q.filters)
            except Exception as exc:
                raise Unavailable("the database cannot answer searches now", retry_after=1) from exc
            self._metrics.search_duration.labels(self._label(db.store)).observe(
                time.perf_counter() - started
            )
            full = False
            for i, hit in enumerate(result.hits):
                examined += 1
                last_key = hit.key
                row = found.get(hit.id)
                if row is not None:
                    hit.version, hit.title = row
                    collected.append(hit)
                if len(collected) == q.limit:
                    more = i < len(result.hits) - 1 or result.more
                    full = True
                    break
            if full or not result.more or not result.hits:
                more = more if full else result.more
                break
            after = result.hits[-1].key
            more = True
        page = SearchPage(
            hits=collected,
            total=total,
            facets=facets,
            engines=[index.name, db.store],
            degraded=False,
            took_ms=0.0,
        )
        if more and last_key is not None:
            page.next_cursor = encode_cursor(
                q, index.name, last_key, q.offset + len(collected), weights or ()
            )
        return page

    def _page(
        self, q: SearchQuery, result: SearchResult, engines: list[str], engine: str, degraded: bool
    ) -> SearchPage:
        page = SearchPage(
            hits=result.hits,
            total=result.total,
            facets=result.facets,
            engines=engines,
            degraded=degraded,
            took_ms=0.0,
        )
        if result.more and result.hits:
            page.next_cursor = encode_cursor(
                q, engine, result.hits[-1].key, q.offset + len(result.hits), result.weights
            )
        return page
