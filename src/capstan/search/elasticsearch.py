"""Elasticsearch through the official async client: a versioned index behind an alias.

Names, for alias `A` (settings.search_index): the read alias `A` points at exactly one index;
the write alias `A-write` points at every index that must receive writes (two during a
reindex); indices are `A-<unix ms>`. Every write uses external versioning from the row version,
so a stale or replayed write is refused by Elasticsearch itself (status 409), and a delete
leaves a tombstone at `version + 1` (kept `index.gc_deletes`) that no older write can pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError, TransportError
from elasticsearch import ConnectionError as EsConnectionError

from capstan.node_urls import node_urls
from capstan.search.analysis import ANALYSIS_VERSION, search_columns
from capstan.search.highlight import highlight
from capstan.search.port import (
    Filters,
    Hit,
    IndexDoc,
    IndexReport,
    Removal,
    SearchQuery,
    SearchResult,
    SearchUnavailable,
    metadata_text,
)
from capstan.search.query import FIELD_WEIGHTS, TIER, ParsedQuery, idf, parse

FACET_SIZE = 20
BULK_TIMEOUT_SECONDS = 60.0
# Index and alias changes wait until every node has applied the new cluster state: seconds on a
# busy cluster, more than a search may take.
MANAGE_TIMEOUT_SECONDS = 30.0
ANALYZED_CHECK_SECONDS = 30.0


# The analyzed fields (search/analysis.py): the `whitespace` analyzer, a core one, only splits
# the terms Python made, so this index matches exactly what the database engines match.
TERMS_FIELDS = ("title_terms", "tags_terms", "body_terms")
ES_FIELD = {
    "terms_title": "title_terms",
    "terms_tags": "tags_terms",
    "terms_body": "body_terms",
    "terms_norm": "terms_norm",
}
RANKED_FIELDS = ["title_terms^3", "tags_terms^2", "body_terms"]


def document_source(doc: IndexDoc) -> dict[str, Any]:
    meta = []
    for key, value in doc.metadata.items():
        text_value = metadata_text(value)
        if text_value is not None:
            meta.append(f"{key}={text_value}")
    return {
        "doc_id": doc.id,
        "tenant_id": doc.tenant_id,
        "collection": doc.collection,
        "title": doc.title,
        "body": doc.body,
        "tags": list(doc.tags),
        **{
            ES_FIELD[name]: value
            for name, value in search_columns(doc.title, doc.body, doc.tags).items()
        },
        "meta": meta,
        "version": doc.version,
        "created_at": doc.created_at.isoformat(),
        "updated_at": doc.updated_at.isoformat(),
    }


def filter_clauses(tenant_id: str, f: Filters) -> list[dict[str, Any]]:
    """The tenant and structured filters as Elasticsearch filter clauses, on the fields both
    indices (documents, vectors) map alike: tenant_id, collection, tags, created_at, meta."""
    clauses: list[dict[str, Any]] = [{"term": {"tenant_id": tenant_id}}]
    if f.collection is not None:
        clauses.append({"term": {"collection": f.collection}})
    if f.tags:
        if f.tags_mode == "all":
            clauses.extend({"term": {"tags": t}} for t in f.tags)
        else:
            clauses.append({"terms": {"tags": list(f.tags)}})
    dates: dict[str, str] = {}
    if f.created_after is not None:
        dates["gt"] = f.created_after.isoformat()
    if f.created_before is not None:
        dates["lt"] = f.created_before.isoformat()
    if dates:
        clauses.append({"range": {"created_at": dates}})
    clauses.extend({"term": {"meta": f"{k}={v}"}} for k, v in f.metadata)
    return clauses


class ElasticsearchEngine:
    name = "elasticsearch"
    derived: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        alias: str = "capstan-documents",
        analyzer: str = "standard",
        timeout_seconds: float = 2.0,
        shards: int = 1,
        replicas: int = 0,
        alias_cache_seconds: float = 1.0,
    ) -> None:
        # Several nodes (a comma-separated list) are used in turn; a request that cannot reach
        # one goes on to the next (the client marks that node dead for a while), so losing
        # one node costs no failed search. One node: no retry, the caller degrades instead.
        nodes = node_urls(url)
        self.client = AsyncElasticsearch(
            nodes, request_timeout=timeout_seconds, max_retries=len(nodes) - 1
        )
        self._manage = self.client.options(request_timeout=MANAGE_TIMEOUT_SECONDS).indices
        self.alias = alias
        self.write_alias = f"{alias}-write"
        self.analyzer = analyzer
        self.shards = shards
        self.replicas = replicas
        self.alias_cache_seconds = alias_cache_seconds
        self._ready = False
        self._lock = asyncio.Lock()
        self._targets: tuple[float, list[str]] = (0.0, [])
        self._analyzed: tuple[float, bool] = (float("-inf"), False)

    # --- management ------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            health = await self.client.cluster.health()
        except (EsConnectionError, TransportError) as exc:
            raise SearchUnavailable(f"elasticsearch: {exc}") from exc
        if health["status"] == "red":
            raise SearchUnavailable("elasticsearch cluster is red")

    def body(self) -> dict[str, Any]:
        text = {"type": "text", "analyzer": self.analyzer}
        return {
            "settings": {
                "number_of_shards": self.shards,
                "number_of_replicas": self.replicas,
                # Delete tombstones outlive any write that read the row before the delete.
                "index.gc_deletes": "1h",
            },
            "mappings": {
                # Which analysis built this index: only an index built whole with the current
                # one (created by this code, filled by reindex or the indexer) answers queries.
                "_meta": {"analysis": ANALYSIS_VERSION},
                "dynamic": "strict",
                "properties": {
                    "doc_id": {"type": "keyword"},
                    "tenant_id": {"type": "keyword"},
                    "collection": {"type": "keyword"},
                    "title": text,
                    "body": text,
                    "tags": {"type": "keyword"},
                    **{name: {"type": "text", "analyzer": "whitespace"} for name in TERMS_FIELDS},
                    "terms_norm": {"type": "double"},
                    "meta": {"type": "keyword"},
                    "version": {"type": "long"},
                    "created_at": {"type": "date"},
                    "updated_at": {"type": "date"},
                },
            },
        }

    def new_index_name(self) -> str:
        return f"{self.alias}-{time.time_ns() // 1_000_000}"

    async def create_index(self, name: str, aliases: Sequence[str] = ()) -> None:
        body = self.body()
        await self._call(
            self._manage.create(
                index=name,
                settings=body["settings"],
                mappings=body["mappings"],
                aliases={a: {} for a in aliases},
            )
        )

    async def ensure(self) -> None:
        """Create the first index with both aliases, once (race-safe: the first index has a
        fixed name, so concurrent processes collide on it instead of creating two)."""
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            if not await self._call(self.client.indices.exists_alias(name=self.alias)):
                try:
                    await self.create_index(f"{self.alias}-0", [self.alias, self.write_alias])
                except SearchUnavailable as exc:
                    if not isinstance(exc.__cause__, ApiError) or exc.__cause__.status_code != 400:
                        raise
            await self._add_analysis_fields()
            await self._follow_replicas()
            self._ready = True

    async def _follow_replicas(self) -> None:
        """Indices made under another `replicas` (a single node grown into a cluster) get this
        one: `number_of_replicas` is a dynamic setting, so no reindex is needed."""
        found = await self._call(
            self.client.indices.get_settings(
                index=self.write_alias, name="index.number_of_replicas"
            )
        )
        for name, index in found.body.items():
            if int(index["settings"]["index"]["number_of_replicas"]) != self.replicas:
                await self._call(
                    self._manage.put_settings(
                        index=name, settings={"index": {"number_of_replicas": self.replicas}}
                    )
                )

    async def _add_analysis_fields(self) -> None:
        """Indices made before the analysis fields existed get them (adding fields to a
        mapping is allowed in place), so the indexer's writes are accepted; their older
        documents lack the terms until `capstan search reindex` rebuilds the index, and until
        then `analyzed()` is false and text queries are answered by the database."""
        found = await self._call(self.client.indices.get_mapping(index=self.write_alias))
        added = self.body()["mappings"]["properties"]
        for name, index in found.body.items():
            have = index.get("mappings", {}).get("properties", {})
            missing = {f: added[f] for f in (*TERMS_FIELDS, "terms_norm") if f not in have}
            if missing:
                await self._call(self._manage.put_mapping(index=name, properties=missing))

    async def analyzed(self) -> bool:
        """Whether the read index was built with the analysis (search/analysis.py); checked
        at most every `ANALYZED_CHECK_SECONDS`."""
        at, ok = self._analyzed
        if ok and time.monotonic() - at < ANALYZED_CHECK_SECONDS:
            return True
        if not ok and time.monotonic() - at < self.alias_cache_seconds:
            return False
        found = await self._call(self.client.indices.get_mapping(index=self.alias))
        ok = bool(found.body) and all(
            index.get("mappings", {}).get("_meta", {}).get("analysis") == ANALYSIS_VERSION
            for index in found.body.values()
        )
        self._analyzed = (time.monotonic(), ok)
        return ok

    async def read_index(self) -> str | None:
        try:
            found = await self._call(self.client.indices.get_alias(name=self.alias))
        except SearchUnavailable as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return None
            raise
        names = list(found.body)
        return names[0] if names else None

    async def write_targets(self, *, fresh: bool = False) -> list[str]:
        """The indices writes go to, cached briefly (a reindex waits out the cache)."""
        at, names = self._targets
        if not fresh and names and time.monotonic() - at < self.alias_cache_seconds:
            return names
        await self.ensure()
        found = await self._call(self.client.indices.get_alias(name=self.write_alias))
        names = sorted(found.body)
        self._targets = (time.monotonic(), names)
        return names

    async def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        await self._call(self._manage.update_aliases(actions=actions))
        self._targets = (0.0, [])
        self._analyzed = (float("-inf"), False)

    async def delete_index(self, name: str) -> None:
        await self._call(self._manage.delete(index=name, ignore_unavailable=True))

    async def refresh(self) -> None:
        await self.ensure()
        await self._call(self.client.indices.refresh(index=self.write_alias))
        await self._call(self.client.indices.refresh(index=self.alias))

    async def close(self) -> None:
        self._closed = True
        await self.client.close()

    async def _call(self, awaitable: Any) -> Any:
        if getattr(self, "_closed", False):
            # A late caller (a batch still flushing at shutdown) must not make the client
            # open a new HTTP session that nothing would close.
            awaitable.close()
            raise SearchUnavailable("elasticsearch: the client is closed")
        try:
            return await awaitable
        except (EsConnectionError, TransportError, ApiError) as exc:
            raise SearchUnavailable(f"elasticsearch: {exc}") from exc

    # --- writes ----------------------------------------------------------------------------

    async def index(
        self, docs: Sequence[IndexDoc], *, targets: Sequence[str] | None = None
    ) -> IndexReport:
        if not docs:
            return IndexReport()
        names = list(targets) if targets is not None else await self.write_targets()
        ops: list[dict[str, Any]] = []
        for doc in docs:
            source = document_source(doc)
            for name in names:
                ops.append(
                    {
                        "index": {
                            "_index": name,
                            "_id": doc.id,
                            "version": doc.version,
                            "version_type": "external",
                        }
                    }
                )
                ops.append(source)
        return await self._bulk(ops, ok_statuses=(200, 201))

    async def delete(
        self, removals: Sequence[Removal], *, targets: Sequence[str] | None = None
    ) -> IndexReport:
        if not removals:
            return IndexReport()
        names = list(targets) if targets is not None else await self.write_targets()
        ops: list[dict[str, Any]] = []
        for r in removals:
            for name in names:
                ops.append(
                    {
                        "delete": {
                            "_index": name,
                            "_id": r.id,
                            "version": r.version + 1,
                            "version_type": "external",
                        }
                    }
                )
        # 404: it was not there; the tombstone is recorded all the same.
        return await self._bulk(ops, ok_statuses=(200, 404))

    async def _bulk(self, ops: list[dict[str, Any]], ok_statuses: tuple[int, ...]) -> IndexReport:
        client = self.client.options(request_timeout=BULK_TIMEOUT_SECONDS)
        response = await self._call(client.bulk(operations=ops))
        report = IndexReport()
        per_doc: dict[str, str] = {}  # id → "applied" | "stale" | error
        for item in response["items"]:
            ((_action, result),) = item.items()
            doc_id, status = result["_id"], result["status"]
            if status in ok_statuses:
                per_doc.setdefault(doc_id, "applied")
            elif status == 409:
                if per_doc.get(doc_id) in (None, "applied"):
                    per_doc[doc_id] = "stale"
            else:
                error = result.get("error", {})
                per_doc[doc_id] = f"{status} {error.get('type', '')}: {error.get('reason', '')}"
        for doc_id, outcome in per_doc.items():
            if outcome == "applied":
                report.applied += 1
            elif outcome == "stale":
                report.stale += 1
            else:
                report.failed[doc_id] = outcome
        return report

    # --- reads -----------------------------------------------------------------------------

    @staticmethod
    def text_clauses(parsed: ParsedQuery, idfs: Sequence[float]) -> dict[str, list[Any]]:
        """The bool clauses of a parsed query (search/query.py), `idfs` one per ranked item.

        Per term, an exact match scores `2 * TIER` and a typo match `TIER` (named `t<i>` /
        `f<i>`, so each hit tells which rule let it in), `minimum_should_match` over the terms;
        relevance is built from constant scores (idf times the best field's weight, times the
        document's `terms_norm`), never from BM25, so it equals the databases' number. Phrases
        and exclusions are filters: they decide, they do not score."""

        def field_match(forms: Sequence[str], field: str) -> list[dict[str, Any]]:
            return [
                {"term": {field: form}} if " " not in form else {"match_phrase": {field: form}}
                for form in forms
            ]

        def anywhere(forms: Sequence[str]) -> dict[str, Any]:
            return {"bool": {"should": [c for f in TERMS_FIELDS for c in field_match(forms, f)]}}

        def relevance(forms: Sequence[str], weight: float) -> dict[str, Any]:
            best = [
                {
                    "constant_score": {
                        "filter": {"bool": {"should": field_match(forms, f"{field}_terms")}},
                        "boost": w * weight,
                    }
                }
                for field, w in FIELD_WEIGHTS.items()
            ]
            return {
                "function_score": {
                    "query": {"dis_max": {"queries": best}},
                    "functions": [{"field_value_factor": {"field": "terms_norm", "missing": 1.0}}],
                    "boost_mode": "multiply",
                }
            }

        def phrase(words: tuple[str, ...]) -> dict[str, Any]:
            return anywhere([" ".join(words)])

        ranked = parsed.ranked()
        weights = dict(zip(ranked, idfs, strict=True))
        clauses: list[dict[str, Any]] = []
        for i, term in enumerate(parsed.terms):
            tiers: list[dict[str, Any]] = [
                {
                    "constant_score": {
                        "filter": anywhere(term.forms),
                        "boost": 2 * TIER,
                        "_name": f"t{i}",
                    }
                }
            ]
            if term.variants:
                tiers.append(
                    {
                        "constant_score": {
                            "filter": {
                                "bool": {
                                    "should": [
                                        {"terms": {f: list(term.variants)}} for f in TERMS_FIELDS
                                    ]
                                }
                            },
                            "boost": TIER,
                            "_name": f"f{i}",
                        }
                    }
                )
            clauses.append(
                {
                    "bool": {
                        "should": [
                            {"dis_max": {"queries": tiers}},
                            relevance(term.forms, weights[term.forms]),
                        ]
                    }
                }
            )
        must: list[dict[str, Any]] = []
        if clauses:
            must.append({"bool": {"should": clauses, "minimum_should_match": parsed.required}})
        elif not parsed.phrases:  # nothing positive: a query that finds nothing
            must.append({"match_none": {}})
        term_forms = {t.forms for t in parsed.terms}
        return {
            "filter": [phrase(p) for p in parsed.phrases],
            "must": must,
            "must_not": [phrase(p) for p in parsed.excluded],
            # Phrase words count for relevance like terms do.
            "should": [relevance(r, weights[r]) for r in ranked if r not in term_forms],
        }

    async def stats(self, tenant_id: str, ranked: Sequence[tuple[str, ...]]) -> list[float]:
        """The idf of each ranked item over the tenant's documents (search/query.py)."""
        if not ranked:
            return []
        aggs = {
            f"d{i}": {
                "filter": {
                    "bool": {
                        "should": [
                            {"term": {f: form}} if " " not in form else {"match_phrase": {f: form}}
                            for f in TERMS_FIELDS
                            for form in forms
                        ]
                    }
                }
            }
            for i, forms in enumerate(ranked)
        }
        response = await self._call(
            self.client.search(
                index=self.alias,
                size=0,
                track_total_hits=True,
                query={"term": {"tenant_id": tenant_id}},
                aggs=aggs,
            )
        )
        n = int(response["hits"]["total"]["value"])
        return [
            idf(n, int(response["aggregations"][f"d{i}"]["doc_count"])) for i in range(len(ranked))
        ]

    def build_query(self, q: SearchQuery, idfs: Sequence[float] = ()) -> dict[str, Any]:
        """The search body; `idfs` (from `stats`) weigh the ranked items of a text query."""
        filters = filter_clauses(q.tenant_id, q.filters)
        text = (q.text or "").strip()
        bool_: dict[str, Any] = {"filter": filters}
        if text:
            for kind, clauses in self.text_clauses(parse(text, typos=q.typos), idfs).items():
                bool_.setdefault(kind, []).extend(clauses)
        sort: list[Any]
        if q.sort == "relevance" and text:
            sort = ["_score", {"doc_id": "asc"}]
        else:
            field = "updated_at" if q.sort == "updated" else "created_at"
            sort = [{field: "desc"}, {"doc_id": "desc"}]
        body: dict[str, Any] = {
            "query": {"bool": bool_},
            "sort": sort,
            "size": q.limit + 1,
            "track_total_hits": True,
            "version": True,
            "_source": ["title", "body"] if text and q.with_highlights else ["title"],
        }
        if q.after is not None:
            body["search_after"] = list(q.after)
        elif q.offset:
            body["from"] = q.offset
        if q.with_facets:
            body["aggs"] = {
                "tags": {"terms": {"field": "tags", "size": FACET_SIZE}},
                "collections": {"terms": {"field": "collection", "size": FACET_SIZE}},
            }
        return body

    async def query(self, q: SearchQuery) -> SearchResult:
        await self.ensure()
        text = (q.text or "").strip()
        if text and not await self.analyzed():
            raise SearchUnavailable(
                "elasticsearch: the index predates the search analysis; "
                "run `capstan search reindex` (the database answers until then)"
            )
        parsed = parse(text, typos=q.typos) if text else None
        idfs: tuple[float, ...] = ()
        if parsed is not None:
            idfs = (
                q.weights
                if q.weights is not None
                else tuple(await self.stats(q.tenant_id, parsed.ranked()))
            )
        body = self.build_query(q, idfs)
        response = await self._call(self.client.search(index=self.alias, **body))
        raw = response["hits"]["hits"]
        more = len(raw) > q.limit
        hits = []
        words = set(parsed.words()) if parsed is not None else set()
        for h in raw[: q.limit]:
            source = h["_source"]
            hit = Hit(
                id=h["_id"],
                title=source.get("title", ""),
                score=h.get("_score") if parsed is not None else None,
                version=int(h["_version"]),
                key=tuple(h["sort"]),
            )
            if parsed is not None:
                named = set(h.get("matched_queries", ()))
                n = len(parsed.terms)
                exact = sum(f"t{i}" in named for i in range(n))
                matched = sum(bool({f"t{i}", f"f{i}"} & named) for i in range(n))
                hit.match = parsed.rule(exact, matched)
                if q.with_highlights:
                    hit.highlights = highlight(hit.title, source.get("body", ""), words)
            hits.append(hit)
        facets: dict[str, dict[str, int]] = {}
        aggs = response.get("aggregations")
        if aggs:
            facets = {
                name: {b["key"]: int(b["doc_count"]) for b in aggs[name]["buckets"]}
                for name in ("collections", "tags")
            }
        return SearchResult(
            hits=hits,
            total=int(response["hits"]["total"]["value"]),
            facets=facets,
            more=more,
            weights=idfs,
        )

    async def versions(self, tenant_id: str, *, index: str | None = None) -> dict[str, int]:
        """Every indexed id of a tenant and its version (for the reconciler)."""
        await self.ensure()
        out: dict[str, int] = {}
        after: list[Any] | None = None
        while True:
            kwargs: dict[str, Any] = {
                "index": index or self.alias,
                "query": {"term": {"tenant_id": tenant_id}},
                "sort": [{"doc_id": "asc"}],
                "size": 5000,
                "version": True,
                "_source": False,
                "track_total_hits": False,
            }
            if after is not None:
                kwargs["search_after"] = after
            response = await self._call(self.client.search(**kwargs))
            page = response["hits"]["hits"]
            for h in page:
                out[h["_id"]] = int(h["_version"])
            if len(page) < 5000:
                return out
            after = page[-1]["sort"]

    async def tenants(self, *, index: str | None = None) -> set[str]:
        await self.ensure()
        response = await self._call(
            self.client.search(
                index=index or self.alias,
                size=0,
                aggs={"t": {"terms": {"field": "tenant_id", "size": 100_000}}},
            )
        )
        return {b["key"] for b in response["aggregations"]["t"]["buckets"]}
