"""The Elasticsearch vector store: `dense_vector` (cosine, HNSW-indexed) kNN.

- One index per space behind an alias `<prefix>-vectors-<space.key>` (the first index has a
  fixed name, `<alias>-0`, so concurrent processes creating it collide instead of making two);
  `drop_space` deletes the indices behind the alias.
- One Elasticsearch document per document, its chunks `nested`: a nested kNN query scores each
  document by its best chunk and `k` counts documents, so `limit` documents come back however
  many chunks each has, and `inner_hits` names the winning chunk. An upsert replaces the whole
  document, so no chunk of an older version survives it; chunks as separate documents would
  need a collapse and a delete-by-query of the leftovers, outside the version check.
- Writes use external versions (`external_gte`: the same version again is applied, a lower one
  is refused with 409, counted stale); a delete leaves a tombstone at version + 1 (kept
  `index.gc_deletes`, as the search index does).
- The tenant and the structured filters are the kNN `filter`: Elasticsearch applies them while
  it walks the graph (and searches exactly when they are selective), never after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError, TransportError
from elasticsearch import ConnectionError as EsConnectionError

from capstan.node_urls import node_urls
from capstan.search.elasticsearch import filter_clauses
from capstan.search.port import IndexReport, Removal
from capstan.search.vector_sql import meta_terms, unit
from capstan.search.vectors import (
    ChunkHit,
    DocumentVectors,
    Space,
    VectorQuery,
    VectorsUnavailable,
    check_dimension,
)

BULK_TIMEOUT_SECONDS = 60.0
MANAGE_TIMEOUT_SECONDS = 30.0
# Graph candidates per shard: more than `limit` for recall, bounded for latency.
MIN_CANDIDATES = 100
MAX_CANDIDATES = 10_000
PAGE = 5000
RESCORE_OVERSAMPLE = 3.0


class ElasticsearchVectors:
    name = "elasticsearch-vectors"
    derived: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "capstan-documents",
        timeout_seconds: float = 2.0,
        shards: int = 1,
        replicas: int = 0,
    ) -> None:
        nodes = node_urls(url)
        self.client = AsyncElasticsearch(
            nodes, request_timeout=timeout_seconds, max_retries=len(nodes) - 1
        )
        self._manage = self.client.options(request_timeout=MANAGE_TIMEOUT_SECONDS)
        self.prefix = prefix
        self.shards = shards
        self.replicas = replicas
        self._ready: set[str] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    def alias(self, space: Space) -> str:
        return f"{self.prefix}-vectors-{space.key}"

    @staticmethod
    def doc_id(tenant_id: str, document_id: str) -> str:
        # Document ids are unique within a tenant; the index holds every tenant.
        return f"{tenant_id}/{document_id}"

    async def _call(self, awaitable: Any) -> Any:
        if self._closed:
            awaitable.close()
            raise VectorsUnavailable("elasticsearch: the client is closed")
        try:
            return await awaitable
        except (EsConnectionError, TransportError, ApiError) as exc:
            raise VectorsUnavailable(f"elasticsearch: {exc}") from exc

    # --- management ------------------------------------------------------------------------

    async def ping(self) -> None:
        health = await self._call(self.client.cluster.health())
        if health["status"] == "red":
            raise VectorsUnavailable("elasticsearch cluster is red")

    def body(self, space: Space) -> dict[str, Any]:
        return {
            "settings": {
                "number_of_shards": self.shards,
                "number_of_replicas": self.replicas,
                "index.gc_deletes": "1h",
            },
            "mappings": {
                "_meta": {"model": space.model, "version": space.version},
                "dynamic": "strict",
                "properties": {
                    "doc_id": {"type": "keyword"},
                    "tenant_id": {"type": "keyword"},
                    "collection": {"type": "keyword"},
                    "tags": {"type": "keyword"},
                    "meta": {"type": "keyword"},
                    "created_at": {"type": "date"},
                    "version": {"type": "long"},
                    "chunks": {
                        "type": "nested",
                        "properties": {
                            "index": {"type": "integer"},
                            "start": {"type": "integer"},
                            "end": {"type": "integer"},
                            "text": {"type": "text", "index": False},
                            "vector": {
                                "type": "dense_vector",
                                "dims": space.dimension,
                                "index": True,
                                "similarity": "cosine",
                            },
                        },
                    },
                },
            },
        }

    async def ensure_space(self, space: Space) -> None:
        alias = self.alias(space)
        if alias in self._ready:
            return
        async with self._lock:
            if alias in self._ready:
                return
            if not await self._call(self.client.indices.exists_alias(name=alias)):
                body = self.body(space)
                try:
                    await self._call(
                        self._manage.indices.create(
                            index=f"{alias}-0",
                            settings=body["settings"],
                            mappings=body["mappings"],
                            aliases={alias: {}},
                        )
                    )
                except VectorsUnavailable as exc:  # another process created it first
                    if not isinstance(exc.__cause__, ApiError) or exc.__cause__.status_code != 400:
                        raise
            self._ready.add(alias)

    async def drop_space(self, space: Space) -> None:
        alias = self.alias(space)
        self._ready.discard(alias)
        try:
            found = await self._call(self.client.indices.get_alias(name=alias))
        except VectorsUnavailable as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return
            raise
        for name in found.body:
            await self._call(self._manage.indices.delete(index=name, ignore_unavailable=True))

    async def refresh(self) -> None:
        await self._call(self._manage.indices.refresh(index=f"{self.prefix}-vectors-*"))

    async def close(self) -> None:
        self._closed = True
        await self.client.close()

    # --- writes ----------------------------------------------------------------------------

    async def upsert(self, space: Space, docs: Sequence[DocumentVectors]) -> IndexReport:
        for doc in docs:
            for c in doc.chunks:
                check_dimension(space, c.vector, f"chunk {c.index} of document {doc.document_id}")
        if not docs:
            return IndexReport()
        await self.ensure_space(space)
        ops: list[dict[str, Any]] = []
        for doc in docs:
            ops.append(
                {
                    "index": {
                        "_index": self.alias(space),
                        "_id": self.doc_id(doc.tenant_id, doc.document_id),
                        "version": doc.version,
                        "version_type": "external_gte",
                    }
                }
            )
            ops.append(
                {
                    "doc_id": doc.document_id,
                    "tenant_id": doc.tenant_id,
                    "collection": doc.collection,
                    "tags": list(doc.tags),
                    "meta": meta_terms(doc.metadata),
                    "created_at": doc.created_at.isoformat(),
                    "version": doc.version,
                    "chunks": [
                        {
                            "index": c.index,
                            "start": c.start,
                            "end": c.end,
                            "text": c.text,
                            "vector": unit(c.vector).tolist(),
                        }
                        for c in doc.chunks
                    ],
                }
            )
        return await self._bulk(ops, ok_statuses=(200, 201))

    async def delete(self, space: Space, removals: Sequence[Removal]) -> IndexReport:
        if not removals:
            return IndexReport()
        await self.ensure_space(space)
        ops = [
            {
                "delete": {
                    "_index": self.alias(space),
                    "_id": self.doc_id(r.tenant_id, r.id),
                    "version": r.version + 1,
                    "version_type": "external",
                }
            }
            for r in removals
        ]
        # 404: it was not there; the tombstone is recorded all the same.
        return await self._bulk(ops, ok_statuses=(200, 404))

    async def _bulk(self, ops: list[dict[str, Any]], ok_statuses: tuple[int, ...]) -> IndexReport:
        client = self.client.options(request_timeout=BULK_TIMEOUT_SECONDS)
        response = await self._call(client.bulk(operations=ops))
        report = IndexReport()
        for item in response["items"]:
            ((_action, result),) = item.items()
            status = result["status"]
            if status in ok_statuses:
                report.applied += 1
            elif status == 409:
                report.stale += 1
            else:
                error = result.get("error", {})
                report.failed[result["_id"].split("/", 1)[-1]] = (
                    f"{status} {error.get('type', '')}: {error.get('reason', '')}"
                )
        return report

    # --- reads -----------------------------------------------------------------------------

    async def query(self, space: Space, q: VectorQuery) -> list[ChunkHit]:
        check_dimension(space, q.vector, "the query vector")
        if q.limit <= 0:
            return []
        knn = {
            "field": "chunks.vector",
            "query_vector": unit(q.vector).tolist(),
            "k": q.limit,
            "num_candidates": min(MAX_CANDIDATES, max(MIN_CANDIDATES, 2 * q.limit)),
            "filter": filter_clauses(q.tenant_id, q.filters),
            # The graph holds int8-quantized vectors (Elasticsearch's default, a quarter of the
            # memory); the candidates are rescored with the stored floats: exact cosines.
            "rescore_vector": {"oversample": RESCORE_OVERSAMPLE},
            # The best chunk of each document, without its vector.
            "inner_hits": {
                "size": 1,
                "_source": ["chunks.index", "chunks.start", "chunks.end", "chunks.text"],
            },
        }
        try:
            response = await self._call(
                self.client.search(
                    index=self.alias(space),
                    knn=knn,
                    size=q.limit,
                    source_includes=["doc_id"],
                    version=True,
                )
            )
        except VectorsUnavailable as exc:
            if isinstance(exc.__cause__, NotFoundError):  # the space holds nothing yet
                return []
            raise
        hits = []
        for h in response["hits"]["hits"]:
            inner = h["inner_hits"]["chunks"]["hits"]["hits"][0]
            chunk = inner["_source"]
            hits.append(
                ChunkHit(
                    document_id=h["_source"]["doc_id"],
                    version=int(h["_version"]),
                    chunk=int(chunk["index"]),
                    start=int(chunk["start"]),
                    end=int(chunk["end"]),
                    text=chunk["text"],
                    # Elasticsearch's cosine score is (1 + cos) / 2.
                    score=2.0 * float(inner["_score"]) - 1.0,
                )
            )
        return hits

    async def versions(
        self, space: Space, tenant_id: str | None = None
    ) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        after: list[Any] | None = None
        query = {"term": {"tenant_id": tenant_id}} if tenant_id else {"match_all": {}}
        while True:
            kwargs: dict[str, Any] = {
                "index": self.alias(space),
                "query": query,
                "sort": [{"tenant_id": "asc"}, {"doc_id": "asc"}],
                "size": PAGE,
                "version": True,
                "source": ["tenant_id", "doc_id"],
                "track_total_hits": False,
            }
            if after is not None:
                kwargs["search_after"] = after
            try:
                response = await self._call(self.client.search(**kwargs))
            except VectorsUnavailable as exc:
                if isinstance(exc.__cause__, NotFoundError):
                    return out
                raise
            page = response["hits"]["hits"]
            for h in page:
                s = h["_source"]
                out[(s["tenant_id"], s["doc_id"])] = int(h["_version"])
            if len(page) < PAGE:
                return out
            after = page[-1]["sort"]
