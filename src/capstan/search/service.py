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
from typing import Any

from capstan.errors import InvalidInput, Unavailable
from capstan.observability.metrics import Metrics
from capstan.search.elasticsearch import ElasticsearchEngine
from capstan.search.port import Hit, SearchQuery, SearchResult, SearchUnavailable
from capstan.search.query import parse
from capstan.search.sql import DatabaseSearch

log = logging.getLogger(__name__)

MAX_ROUNDS = 3


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


def _fingerprint(q: SearchQuery) -> str:
    raw = json.dumps([q.text or "", repr(q.filters), q.sort, q.typos], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def encode_cursor(q: SearchQuery, engine: str, key: tuple[Any, ...], offset: int) -> str:
    raw = json.dumps(
        {"e": engine, "k": list(key), "o": offset, "f": _fingerprint(q)}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, q: SearchQuery) -> tuple[str, tuple[Any, ...], int]:
    """(engine, key, offset) from a cursor; InvalidInput if it is not one issued for `q`."""
    bad = InvalidInput("the cursor is not one this API returned for this query", field="cursor")
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise bad from exc
    if not isinstance(raw, dict) or set(raw) != {"e", "k", "o", "f"}:
        raise bad
    engine, key, offset, fp = raw["e"], raw["k"], raw["o"], raw["f"]
    if (
        not isinstance(engine, str)
        or not isinstance(key, list)
        or len(key) != 2
        or not all(isinstance(k, str | int | float) for k in key)
        or not isinstance(offset, int)
        or offset < 0
        or fp != _fingerprint(q)
    ):
        raise bad
    return engine, tuple(key), offset


class SearchService:
    def __init__(
        self,
        database: DatabaseSearch,
        index: ElasticsearchEngine | None,
        metrics: Metrics,
        *,
        timeout_seconds: float = 1.0,
        retry_seconds: float = 2.0,
    ) -> None:
        self.database = database
        self.index = index
        self._metrics = metrics
        self._timeout = timeout_seconds
        self._retry = retry_seconds
        self._index_down_until = 0.0

    def _label(self, engine: str) -> str:
        return {"postgres-fts": "postgres", "sqlite-fts5": "sqlite"}.get(engine, engine)

    async def search(self, q: SearchQuery, cursor: str | None = None) -> SearchPage:
        started = time.perf_counter()
        cursor_engine: str | None = None
        if cursor is not None:
            cursor_engine, key, offset = decode_cursor(cursor, q)
            q = replace(q, after=key, offset=offset)
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
        after, offset = q.after, q.offset
        last_key: tuple[Any, ...] | None = None
        examined = 0
        for round_ in range(MAX_ROUNDS):
            ask = replace(
                q,
                after=after,
                offset=offset if after is None else 0,
                with_facets=q.with_facets and round_ == 0,
            )
            started = time.perf_counter()
            result = await asyncio.wait_for(index.query(ask), self._timeout)
            self._metrics.search_duration.labels("elasticsearch").observe(
                time.perf_counter() - started
            )
            if round_ == 0:
                total, facets = result.total, result.facets
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
            page.next_cursor = encode_cursor(q, index.name, last_key, q.offset + len(collected))
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
                q, engine, result.hits[-1].key, q.offset + len(result.hits)
            )
        return page
