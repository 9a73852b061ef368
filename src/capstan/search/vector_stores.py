"""The vector stores the settings ask for: the database's always (SQLite, or PostgreSQL with
pgvector when migration 0008 could enable it, else exact scoring in the process), and
Elasticsearch's when CAPSTAN_SEARCH_URL names a cluster (indices named after
CAPSTAN_SEARCH_INDEX)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from capstan.db.replica import ReadRouter
from capstan.search.vectors import VectorStore
from capstan.settings import Settings


@dataclass
class VectorStores:
    database: VectorStore
    index: VectorStore | None = None  # Elasticsearch, when configured

    @property
    def all(self) -> list[VectorStore]:
        return [self.database] if self.index is None else [self.database, self.index]

    async def close(self) -> None:
        for store in self.all:
            await store.close()


def build_vector_stores(
    settings: Settings, engine: AsyncEngine, reads: ReadRouter | None = None
) -> VectorStores:
    from capstan.db.dialect import dialect_of
    from capstan.search.pgvector import PgVectors
    from capstan.search.vector_sql import SqlVectors

    store = dialect_of(engine).choose(sqlite=SqlVectors, postgresql=PgVectors)
    database: VectorStore = store(engine, reads)
    index: VectorStore | None = None
    if settings.search_url.startswith("http"):
        from capstan.search.vector_es import ElasticsearchVectors

        index = ElasticsearchVectors(
            settings.search_url,
            prefix=settings.search_index,
            timeout_seconds=settings.search_timeout_seconds,
            shards=settings.search_shards,
            replicas=settings.search_replicas,
        )
    return VectorStores(database, index)
