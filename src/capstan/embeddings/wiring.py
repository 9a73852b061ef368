"""The vector stores, pipeline and semantic retriever the settings ask for (called by the
composition root; nothing connects until first use)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from capstan.db.replica import ReadRouter
from capstan.embeddings.pipeline import EmbeddingPipeline
from capstan.embeddings.spaces import Spaces
from capstan.search.semantic import VectorSearch
from capstan.search.vectors import VectorStore
from capstan.settings import Settings


@dataclass(slots=True)
class Embeddings:
    pipeline: EmbeddingPipeline
    search: VectorSearch


def vector_stores(
    settings: Settings, engine: AsyncEngine, reads: ReadRouter
) -> Callable[[], Awaitable[list[VectorStore]]]:
    """The database's own store (pgvector when migration 0008 could add its column, else the
    vector tables scored in the process) and, when Elasticsearch is the index, its
    `dense_vector` store; chosen on first use."""

    async def choose() -> list[VectorStore]:
        from capstan.search.vector_sql import SqlVectors

        stores: list[VectorStore] = []
        if engine.dialect.name == "postgresql" and await _has_pgvector(engine):
            from capstan.search.pgvector import PgVectors

            stores.append(PgVectors(engine, reads))
        else:
            stores.append(SqlVectors(engine, reads))
        if settings.search_url.startswith("http"):
            from capstan.search.vector_es import ElasticsearchVectors

            stores.append(
                ElasticsearchVectors(
                    settings.search_url,
                    prefix=settings.search_index,
                    shards=settings.search_shards,
                    replicas=settings.search_replicas,
                )
            )
        return stores

    return choose


async def _has_pgvector(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'vector_chunks' AND column_name = 'embedding'"
            )
        )
    return found is not None


def build_embeddings(
    settings: Settings,
    engine: AsyncEngine,
    db: async_sessionmaker[AsyncSession],
    reads: ReadRouter,
) -> Embeddings | None:
    """None when embeddings are turned off."""
    if not settings.embeddings_enabled:
        return None
    pipeline = EmbeddingPipeline(
        settings, db, vector_stores(settings, engine, reads), spaces=Spaces(db)
    )
    return Embeddings(
        pipeline,
        VectorSearch(
            pipeline,
            timeout_seconds=settings.search_timeout_seconds,
            retry_seconds=settings.search_retry_seconds,
        ),
    )
