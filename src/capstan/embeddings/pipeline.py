"""From a document row to its chunks and vectors in every vector store (docs/embeddings.md).

The `embeddings.document` task calls `embed_document` with the version its event named. It
reads the row as it is now: gone → its vectors are removed; newer than the event → nothing is
done (the newer version's own task embeds it, so a burst of updates is embedded once, at the
latest version); otherwise the row's `title + "\\n\\n" + body` is chunked, embedded in batches
(progress and a cancellation point after each) and written to every store, replacing the
document's previous chunks. Stores refuse a version below the one they hold, so a late task
cannot put old chunks back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.embeddings.chunking import Chunk, Measure, chunk_text, measure_for
from capstan.embeddings.port import Embedder
from capstan.search import indexing
from capstan.search.port import IndexDoc, Removal
from capstan.search.vectors import ChunkVector, DocumentVectors, Space, VectorStore
from capstan.settings import Settings

if TYPE_CHECKING:
    from capstan.embeddings.spaces import Spaces

log = logging.getLogger(__name__)

Progress = Callable[[float, str | None], Awaitable[None]]
EmbedderFactory = Callable[[Settings], Awaitable[Embedder]]


def document_text(title: str, body: str) -> str:
    """The text that is chunked: chunk offsets point into it (title, blank line, body)."""
    return "\n\n".join(p for p in (title, body) if p.strip())


def space_of(embedder: Embedder) -> Space:
    return Space(embedder.model, embedder.version, embedder.dimension)


@dataclass(frozen=True, slots=True)
class Outcome:
    action: str  # embedded | deleted | skipped
    document_id: str
    version: int
    chunks: int = 0
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.action,
            "document_id": self.document_id,
            "version": self.version,
        }
        if self.action == "embedded":
            out["chunks"] = self.chunks
        if self.reason:
            out["reason"] = self.reason
        return out


class EmbeddingPipeline:
    """Chunks, embeds and stores documents; opens the embedder on first use."""

    def __init__(
        self,
        settings: Settings,
        db: async_sessionmaker[AsyncSession],
        stores: Sequence[VectorStore],
        *,
        embedder_factory: EmbedderFactory | None = None,
        spaces: Spaces | None = None,
    ) -> None:
        self.settings = settings
        # Database store first: the fallback must never be behind the index.
        self._stores = sorted(stores, key=lambda s: s.derived)
        self._db = db
        self._factory = embedder_factory
        self._embedder: Embedder | None = None
        self.spaces = spaces
        self._synced = False
        self._lock = asyncio.Lock()
        self._ensured: set[tuple[int, str]] = set()
        self._measure: Measure | None = None  # the tokenizer loads once, on first use

    async def embedder(self) -> Embedder:
        if self._embedder is None:
            async with self._lock:
                if self._embedder is None:
                    if self._factory is None:
                        from capstan.embeddings.factory import build_embedder

                        self._embedder = await build_embedder(self.settings)
                    else:
                        self._embedder = await self._factory(self.settings)
        return self._embedder

    async def stores(self) -> list[VectorStore]:
        """The vector stores, database first."""
        return list(self._stores)

    async def write_space(self) -> Space:
        """The space new writes go to: the configured model's (live, or being built)."""
        return space_of(await self.embedder())

    async def live_space(self) -> Space:
        """The space queries use (embeddings/spaces.py); without a spaces table, the
        configured model's."""
        configured = await self.write_space()
        if self.spaces is None:
            return configured
        if not self._synced:
            live, _building = await self.spaces.sync(configured)
            self._synced = True
            return live
        return await self.spaces.live() or configured

    async def _ensure(self, store: VectorStore, space: Space) -> None:
        key = (id(store), space.key)
        if key not in self._ensured:
            await store.ensure_space(space)
            self._ensured.add(key)

    def chunks(self, doc: IndexDoc) -> list[Chunk]:
        s = self.settings
        if self._measure is None:
            self._measure = measure_for(s.embeddings_chunk_unit)
        return chunk_text(
            document_text(doc.title, doc.body),
            size=s.embeddings_chunk_size,
            overlap=s.embeddings_chunk_overlap,
            measure=self._measure,
        )

    async def embed_document(
        self,
        tenant_id: str,
        document_id: str,
        version: int,
        progress: Progress,
        *,
        space: Space | None = None,
        force: bool = False,
    ) -> Outcome:
        """Bring the stores in line with the row (see the module docstring); `force` embeds
        the current row even when it is newer than `version` (reconcile, re-embedding)."""
        async with self._db() as session:
            rows = await indexing.load(session, [document_id])
        doc = rows.get(document_id)
        if doc is not None and doc.tenant_id != tenant_id:
            doc = None  # another tenant's id: never touch it
        target = space or await self.write_space()
        if doc is None:
            await self.remove(target, [Removal(tenant_id, document_id, version)])
            await progress(1.0, "removed")
            return Outcome("deleted", document_id, version)
        if doc.version > version and not force:
            return Outcome(
                "skipped",
                document_id,
                version,
                reason=f"the document is at version {doc.version}: its own task embeds it",
            )
        vectors = await self.vectors_of(doc, progress)
        await self.write(target, [vectors])
        await progress(1.0, f"{len(vectors.chunks)} chunks stored")
        return Outcome("embedded", document_id, doc.version, chunks=len(vectors.chunks))

    async def vectors_of(self, doc: IndexDoc, progress: Progress | None = None) -> DocumentVectors:
        """The document's chunks with their vectors (progress after each batch)."""
        [vectors] = await self.vectors_of_many([doc], progress)
        return vectors

    async def vectors_of_many(
        self, docs: Sequence[IndexDoc], progress: Progress | None = None
    ) -> list[DocumentVectors]:
        """Each document's chunks with their vectors, the chunks of all of them embedded in
        batches of `embeddings_batch_size` (re-embedding pages of small documents)."""
        embedder = await self.embedder()
        chunked = await asyncio.to_thread(lambda: [self.chunks(d) for d in docs])
        flat = [(i, c) for i, chunks in enumerate(chunked) for c in chunks]
        batch = self.settings.embeddings_batch_size
        out: list[list[ChunkVector]] = [[] for _ in docs]
        for start in range(0, len(flat), batch):
            if progress is not None:
                await progress(
                    0.05 + 0.9 * start / len(flat), f"embedding chunks {start}/{len(flat)}"
                )
            part = flat[start : start + batch]
            vectors = await embedder.embed([c.text for _, c in part])
            for (i, c), v in zip(part, vectors, strict=True):
                out[i].append(ChunkVector(c.index, c.start, c.end, c.text, v))
        if progress is not None:
            await progress(0.95, "storing")
        return [
            DocumentVectors(
                tenant_id=doc.tenant_id,
                document_id=doc.id,
                version=doc.version,
                collection=doc.collection,
                tags=doc.tags,
                metadata=doc.metadata,
                created_at=doc.created_at,
                chunks=tuple(chunks),
            )
            for doc, chunks in zip(docs, out, strict=True)
        ]

    async def write(self, space: Space, docs: Sequence[DocumentVectors]) -> None:
        """Every store, database first (the fallback must never be behind the index)."""
        for store in await self.stores():
            await self._ensure(store, space)
            report = await store.upsert(space, docs)
            if report.failed:
                raise RuntimeError(f"{store.name} refused vectors: {report.failed}")

    async def remove(self, space: Space, removals: Sequence[Removal]) -> None:
        for store in await self.stores():
            await self._ensure(store, space)
            report = await store.delete(space, removals)
            if report.failed:
                raise RuntimeError(f"{store.name} refused deletes: {report.failed}")

    async def close(self) -> None:
        """The embedder; the stores belong to the container."""
        if self._embedder is not None:
            await self._embedder.aclose()
