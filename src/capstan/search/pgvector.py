"""The vector store in PostgreSQL with pgvector: the same tables as the database store
(search/vector_sql.py), plus `vector_chunks.embedding` (migration 0008) and, per space, a
partial HNSW index on `embedding::vector(<dimension>)` for cosine distance.

A query is one statement: the chunks of the tenant's live documents that pass the filters,
ordered by cosine distance, `LIMIT n`. The filters are in its WHERE clause, so PostgreSQL's
planner picks the plan: the per-space HNSW index with pgvector's iterative scan
(`hnsw.iterative_scan = strict_order`, 0.8+: the index keeps walking until enough rows passed
the filters, in exact distance order) when the filters keep many rows, or the filters' indexes
and an exact sort when they keep few. The best chunk per document is kept from those rows; if
they held fewer than `limit` documents, `n` grows and the statement runs again.

Without the `embedding` column (pgvector was not installed when migration 0008 ran, or the
role could not create the extension), the store says so (`name` "postgres-vectors",
`pgvector` False) and works as the database store: exact scoring of the `vector` bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Boolean, ColumnElement, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from capstan.search.port import IndexReport
from capstan.search.vector_sql import DOWN, VC, SqlVectors, unit
from capstan.search.vectors import (
    ChunkHit,
    DocumentVectors,
    Space,
    VectorQuery,
    VectorsUnavailable,
)

# Chunks fetched per wanted document on the first try (documents have several chunks).
OVERFETCH = 4
MIN_FETCH = 40
MAX_EF_SEARCH = 1000


def vector_literal(values: Any) -> str:
    """A pgvector text literal; floats print as digits, '.', 'e' and '-' only."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def index_name(space: Space) -> str:
    return f"ix_vector_chunks_hnsw_{space.key}"


COLUMN = text(
    "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
    "AND table_name = 'vector_chunks' AND column_name = 'embedding'"
)


class PgVectors(SqlVectors):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pgvector: bool | None = None  # found at first use

    async def _detect(self) -> bool:
        if self.pgvector is None:

            async def found(conn: AsyncConnection) -> bool:
                return (await conn.execute(COLUMN)).first() is not None

            try:
                async with self._engine.connect() as conn:
                    self.pgvector = await found(conn)
            except DOWN as exc:
                raise VectorsUnavailable(f"{self.name}: {exc}") from exc
            self.name = "pgvector" if self.pgvector else "postgres-vectors"
        return self.pgvector

    async def ping(self) -> None:
        await super().ping()
        await self._detect()

    async def query(self, space: Space, q: VectorQuery) -> list[ChunkHit]:
        await self._detect()
        return await super().query(space, q)

    async def upsert(self, space: Space, docs: Sequence[DocumentVectors]) -> IndexReport:
        await self._detect()
        return await super().upsert(space, docs)

    @staticmethod
    def _embedding(space: Space) -> str:
        return f"(vector_chunks.embedding::vector({space.dimension}))"

    async def ensure_space(self, space: Space) -> None:
        if not await self._detect():
            return
        # `space.key` is [a-z0-9_] and the dimension an int: safe to inline (a partial index's
        # predicate must be a constant, and queries name it the same way to match it).
        ddl = (
            f"CREATE INDEX IF NOT EXISTS {index_name(space)} ON vector_chunks "
            f"USING hnsw ({self._embedding(space)} vector_cosine_ops) "
            f"WHERE space = '{space.key}'"
        )
        await self._write(lambda conn: conn.execute(text(ddl)))

    async def drop_space(self, space: Space) -> None:
        await super().drop_space(space)
        if not await self._detect():
            return
        await self._write(
            lambda conn: conn.execute(text(f"DROP INDEX IF EXISTS {index_name(space)}"))
        )

    async def _insert_chunks(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        if not self.pgvector:
            return await super()._insert_chunks(conn, rows)
        import numpy as np

        stmt = text(
            "INSERT INTO vector_chunks (space, tenant_id, document_id, chunk, start_offset, "
            "end_offset, text, vector, embedding) VALUES (:space, :tenant_id, :document_id, "
            ":chunk, :start_offset, :end_offset, :text, :vector, "
            "CAST(CAST(:embedding AS text) AS vector))"
        )
        params = [
            {**r, "embedding": vector_literal(np.frombuffer(r["vector"], dtype="<f4"))}
            for r in rows
        ]
        await conn.execute(stmt, params)

    async def _query(self, conn: AsyncConnection, space: Space, q: VectorQuery) -> list[ChunkHit]:
        if not self.pgvector:
            return await super()._query(conn, space, q)
        qv = vector_literal(unit(q.vector))
        distance: ColumnElement[Any] = literal_column(
            f"({self._embedding(space)} <=> '{qv}'::vector({space.dimension}))"
        )
        conds: list[ColumnElement[bool]] = [
            # Inline, so that it matches the partial index's predicate.
            literal_column(f"vector_chunks.space = '{space.key}'", Boolean),
            *self.conditions(space, q.tenant_id, q.filters),
        ]
        n = max(MIN_FETCH, OVERFETCH * q.limit)
        while True:
            await conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
            await conn.execute(text(f"SET LOCAL hnsw.ef_search = {min(MAX_EF_SEARCH, n)}"))
            stmt = (
                select(VC.c.document_id, VC.c.chunk, distance.label("distance"))
                .select_from(self._join())
                .where(*conds)
                .order_by(distance)
                .limit(n)
            )
            rows = (await conn.execute(stmt)).all()
            best: dict[str, tuple[int, float]] = {}
            for r in rows:
                if r.document_id not in best:
                    best[r.document_id] = (int(r.chunk), 1.0 - float(r.distance))
                    if len(best) == q.limit:
                        break
            if len(best) == q.limit or len(rows) < n:
                break
            n *= OVERFETCH
        return await self._hits(conn, space, q.tenant_id, best)
