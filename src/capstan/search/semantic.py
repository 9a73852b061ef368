"""The semantic retriever: the query text embedded in the live space, then the nearest
documents (each with its best chunk) from a vector store, tenant and filters applied inside the
store's query.

Stores are tried in order: the index (Elasticsearch `dense_vector`, when configured) first,
then the database store (pgvector or the embedded store), like the keyword flow's fallback. A
store that failed is skipped for `retry_seconds`. If none answers (or the embedder fails),
`VectorsUnavailable` is raised and the search service answers with keywords, `degraded`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from capstan.embeddings.pipeline import EmbeddingPipeline
from capstan.embeddings.port import EmbeddingError, EmbeddingInputError
from capstan.search.port import Filters
from capstan.search.vectors import ChunkHit, Space, VectorQuery, VectorsUnavailable

log = logging.getLogger(__name__)


@dataclass(slots=True)
class VectorAnswer:
    hits: list[ChunkHit]
    store: str
    space: Space
    # True when a store other than the first answered (the first was down or slow).
    degraded: bool = False
    # Whether the tenant has any vector in the live space (None: not checked).
    has_embeddings: bool | None = None


class VectorSearch:
    def __init__(
        self,
        pipeline: EmbeddingPipeline,
        *,
        timeout_seconds: float = 1.0,
        retry_seconds: float = 2.0,
    ) -> None:
        self.pipeline = pipeline
        self._timeout = timeout_seconds
        self._retry = retry_seconds
        self._down_until: dict[str, float] = {}

    async def embed_query(self, text: str) -> tuple[Space, list[float]]:
        try:
            embedder = await self.pipeline.embedder()
            space = await self.pipeline.live_space()
            if space != await self.pipeline.write_space():
                raise VectorsUnavailable(
                    f"the live space is {space.model}@{space.version}, which this process "
                    "cannot embed queries for: a re-embedding to its configured model runs"
                )
            [vector] = await asyncio.wait_for(embedder.embed([text]), self._timeout * 5)
        except (EmbeddingInputError, VectorsUnavailable):
            raise
        except (EmbeddingError, TimeoutError, OSError) as exc:
            raise VectorsUnavailable(f"the query could not be embedded: {exc}") from exc
        except Exception as exc:  # the spaces table cannot be read (database down)
            raise VectorsUnavailable(f"the live space cannot be read: {exc}") from exc
        return space, vector

    async def search(
        self, tenant_id: str, text: str, filters: Filters, limit: int, *, check_tenant: bool
    ) -> VectorAnswer:
        """The `limit` nearest documents; with `check_tenant`, an empty answer also says
        whether the tenant has embeddings at all (one more unfiltered query of 1)."""
        space, vector = await self.embed_query(text)
        q = VectorQuery(tenant_id=tenant_id, vector=vector, filters=filters, limit=limit)
        last: Exception | None = None
        # The derived store (the index) ranks when it is up; the database store backs it.
        stores = sorted(await self.pipeline.stores(), key=lambda s: not s.derived)
        for i, store in enumerate(stores):
            if time.monotonic() < self._down_until.get(store.name, 0.0) and i < len(stores) - 1:
                continue
            try:
                hits = await asyncio.wait_for(store.query(space, q), self._timeout)
                answer = VectorAnswer(hits, store.name, space, degraded=i > 0)
                if check_tenant:
                    if hits:
                        answer.has_embeddings = True
                    elif filters.empty:
                        answer.has_embeddings = False
                    else:
                        probe = VectorQuery(tenant_id=tenant_id, vector=vector, limit=1)
                        found = await asyncio.wait_for(store.query(space, probe), self._timeout)
                        answer.has_embeddings = bool(found)
                return answer
            except (VectorsUnavailable, TimeoutError, OSError) as exc:
                last = exc
                self._down_until[store.name] = time.monotonic() + self._retry
                log.warning(
                    "vector store unavailable",
                    extra={"store": store.name, "error": str(exc) or type(exc).__name__},
                )
        raise VectorsUnavailable(f"no vector store answered: {last}") from last
