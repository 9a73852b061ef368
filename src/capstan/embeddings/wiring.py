"""The vector stores, pipeline and semantic retriever the settings ask for (called by the
composition root; nothing connects until first use)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from capstan.db.replica import ReadRouter
from capstan.embeddings.pipeline import EmbeddingPipeline
from capstan.search.semantic import VectorSearch
from capstan.search.vectors import VectorStore
from capstan.settings import Settings


@dataclass(slots=True)
class Embeddings:
    pipeline: EmbeddingPipeline
    search: VectorSearch


def vector_stores(settings: Settings, engine: AsyncEngine, reads: ReadRouter) -> list[VectorStore]:
    """The database's own store (vector tables on SQLite and PostgreSQL) and, when
    Elasticsearch is the index, its `dense_vector` store."""
    from capstan.search.vector_sql import SqlVectors

    return [SqlVectors(engine, reads)]


def build_embeddings(
    settings: Settings,
    engine: AsyncEngine,
    db: async_sessionmaker[AsyncSession],
    reads: ReadRouter,
) -> Embeddings | None:
    """None when embeddings are turned off (or no vector store is available)."""
    if not settings.embeddings_enabled:
        return None
    stores = vector_stores(settings, engine, reads)
    if not stores:
        return None
    pipeline = EmbeddingPipeline(settings, db, stores)
    return Embeddings(
        pipeline,
        VectorSearch(
            pipeline,
            stores,
            timeout_seconds=settings.search_timeout_seconds,
            retry_seconds=settings.search_retry_seconds,
        ),
    )
