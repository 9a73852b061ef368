"""The embedding pipeline and the semantic retriever over the container's vector stores
(search/vector_stores.py), when embeddings are on; nothing connects until first use."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.embeddings.pipeline import EmbeddingPipeline
from capstan.embeddings.spaces import Spaces
from capstan.search.semantic import VectorSearch
from capstan.search.vector_stores import VectorStores
from capstan.settings import Settings


@dataclass(slots=True)
class Embeddings:
    pipeline: EmbeddingPipeline
    search: VectorSearch


def build_embeddings(
    settings: Settings, db: async_sessionmaker[AsyncSession], vectors: VectorStores
) -> Embeddings | None:
    """None when embeddings are turned off."""
    if not settings.embeddings_enabled:
        return None
    pipeline = EmbeddingPipeline(settings, db, vectors.all, spaces=Spaces(db))
    return Embeddings(
        pipeline,
        VectorSearch(
            pipeline,
            timeout_seconds=settings.search_timeout_seconds,
            retry_seconds=settings.search_retry_seconds,
        ),
    )
