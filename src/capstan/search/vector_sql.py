"""The vector store in the database (tables of migration 0008), for SQLite and for PostgreSQL
without pgvector: the tenant and the structured filters run in SQL, then every matching chunk is
scored exactly (cosine, numpy) in the process. No approximate index, so no recall loss and no
filtered-out neighbours; the cost is linear in the chunks that pass the filters
(docs/embeddings.md has the figures). A subclass (search/pgvector.py) scores inside PostgreSQL.

Versions: `vector_documents` holds each document's version per space, or its tombstone at the
deleted version + 1 (`live` false); an upsert applies only if its version is at least the
stored one, checked in the same statement that writes it (INSERT .. ON CONFLICT DO UPDATE ..
WHERE), so concurrent writers of one document cannot interleave.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    and_,
    delete,
    exists,
    func,
    select,
    type_coerce,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from capstan.db.dialect import WRITE_OPTION, dialect_of
from capstan.db.replica import ReadRouter
from capstan.db.schema import VectorChunk, VectorDocument, VectorGeneration
from capstan.search.port import Filters, IndexReport, Removal, metadata_text
from capstan.search.vectors import (
    ChunkHit,
    DocumentVectors,
    Space,
    VectorQuery,
    VectorsUnavailable,
    check_dimension,
)

VD = cast(Table, VectorDocument.__table__)
VC = cast(Table, VectorChunk.__table__)
VG = cast(Table, VectorGeneration.__table__)
# The vectors a process keeps in memory (all tenants and spaces), least recently used evicted.
CACHE_BYTES = 256 * 1024 * 1024
# What a tombstone's filter fields hold (never read: tombstones match no query).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DOWN = (OperationalError, DBAPIError, OSError)


def unit(vector: Sequence[float]) -> npt.NDArray[np.float32]:
    """The vector as float32 at unit length (a zero vector stays zero: it matches nothing)."""
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def meta_terms(metadata: dict[str, Any]) -> list[str]:
    """The "key=value" texts a metadata filter matches (as the Elasticsearch index has)."""
    out = []
    for key, value in metadata.items():
        text = metadata_text(value)
        if text is not None:
            out.append(f"{key}={text}")
    return out


@dataclass(slots=True)
class TenantVectors:
    generation: int
    keys: list[tuple[str, int]]  # row → (document, chunk)
    rows: dict[tuple[str, int], int]
    matrix: npt.NDArray[np.float32]


class SqlVectors:
    """The database's vector store; `name` says which dialect it runs on."""

    derived: ClassVar[bool] = False

    def __init__(
        self,
        engine: AsyncEngine,
        reads: ReadRouter | None = None,
        *,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, str], TenantVectors] = OrderedDict()
        self._engine = engine
        # SQLite writers take the write lock up front (capstan.db.engine).
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self._reads = reads or ReadRouter(engine)
        dialect = dialect_of(engine)
        self._postgres = dialect.choose(sqlite=False, postgresql=True)
        self.name = dialect.choose(sqlite="sqlite-vectors", postgresql="postgres-vectors")

    # --- management ------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(select(VD.c.space).limit(1))
        except DOWN as exc:
            raise VectorsUnavailable(f"{self.name}: {exc}") from exc

    async def ensure_space(self, space: Space) -> None:
        return None  # the tables hold every space

    async def drop_space(self, space: Space) -> None:
        async def work(conn: AsyncConnection) -> None:
            await conn.execute(delete(VC).where(VC.c.space == space.key))
            await conn.execute(delete(VD).where(VD.c.space == space.key))
            # Kept and bumped, not deleted: a generation must never repeat for other caches.
            await conn.execute(
                VG.update().where(VG.c.space == space.key).values(generation=VG.c.generation + 1)
            )

        await self._write(work)

    async def refresh(self) -> None:
        return None  # a committed write is visible

    async def close(self) -> None:
        return None  # the engine belongs to the container

    async def _write(self, work: Any) -> Any:
        try:
            async with self._writer.begin() as conn:
                return await work(conn)
        except DOWN as exc:
            raise VectorsUnavailable(f"{self.name}: {exc}") from exc

    # --- writes ----------------------------------------------------------------------------

    def _insert(self, table: Table = VD) -> Any:
        if self._postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    async def _claim(self, conn: AsyncConnection, space: Space, row: dict[str, Any]) -> bool:
        """Write the document's row if its version is not below the stored one; True if it was
        written. The row lock it takes serializes writers of the same document."""
        stmt = self._insert().values(space=space.key, **row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[VD.c.space, VD.c.tenant_id, VD.c.document_id],
            set_={k: stmt.excluded[k] for k in row if k not in ("tenant_id", "document_id")},
            where=VD.c.version <= stmt.excluded.version,
        ).returning(VD.c.document_id)
        return (await conn.execute(stmt)).first() is not None

    async def _drop_chunks(
        self, conn: AsyncConnection, space: Space, tenant: str, doc: str
    ) -> None:
        await conn.execute(
            delete(VC).where(
                VC.c.space == space.key, VC.c.tenant_id == tenant, VC.c.document_id == doc
            )
        )

    def _chunk_rows(self, space: Space, doc: DocumentVectors) -> list[dict[str, Any]]:
        return [
            {
                "space": space.key,
                "tenant_id": doc.tenant_id,
                "document_id": doc.document_id,
                "chunk": c.index,
                "start_offset": c.start,
                "end_offset": c.end,
                "text": c.text,
                "vector": unit(c.vector).astype("<f4").tobytes(),
            }
            for c in doc.chunks
        ]

    async def _bump(self, conn: AsyncConnection, space: Space, tenants: set[str]) -> None:
        """Every process's cache of these tenants' vectors is stale from this commit on."""
        for tenant in sorted(tenants):  # one order: writers of several tenants cannot deadlock
            stmt = self._insert(VG).values(space=space.key, tenant_id=tenant, generation=1)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[VG.c.space, VG.c.tenant_id],
                    set_={"generation": VG.c.generation + 1},
                )
            )

    async def _insert_chunks(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        await conn.execute(VC.insert(), rows)

    async def upsert(self, space: Space, docs: Sequence[DocumentVectors]) -> IndexReport:
        for doc in docs:
            for c in doc.chunks:
                check_dimension(space, c.vector, f"chunk {c.index} of document {doc.document_id}")
        if not docs:
            return IndexReport()

        async def work(conn: AsyncConnection) -> IndexReport:
            report = IndexReport()
            # One lock order for every writer (tenant, document): no deadlock between batches.
            for doc in sorted(docs, key=lambda d: (d.tenant_id, d.document_id)):
                row = {
                    "tenant_id": doc.tenant_id,
                    "document_id": doc.document_id,
                    "version": doc.version,
                    "live": True,
                    "collection": doc.collection,
                    "tags": list(doc.tags),
                    "meta": meta_terms(doc.metadata),
                    "created_at": doc.created_at,
                }
                if not await self._claim(conn, space, row):
                    report.stale += 1
                    continue
                await self._drop_chunks(conn, space, doc.tenant_id, doc.document_id)
                rows = self._chunk_rows(space, doc)
                if rows:
                    await self._insert_chunks(conn, rows)
                report.applied += 1
            await self._bump(conn, space, {d.tenant_id for d in docs})
            return report

        report: IndexReport = await self._write(work)
        return report

    async def delete(self, space: Space, removals: Sequence[Removal]) -> IndexReport:
        if not removals:
            return IndexReport()

        async def work(conn: AsyncConnection) -> IndexReport:
            report = IndexReport()
            for r in sorted(removals, key=lambda r: (r.tenant_id, r.id)):
                tombstone = {
                    "tenant_id": r.tenant_id,
                    "document_id": r.id,
                    "version": r.version + 1,
                    "live": False,
                    "collection": "",
                    "tags": [],
                    "meta": [],
                    "created_at": EPOCH,
                }
                if await self._claim(conn, space, tombstone):
                    await self._drop_chunks(conn, space, r.tenant_id, r.id)
                    report.applied += 1
                else:
                    report.stale += 1
            await self._bump(conn, space, {r.tenant_id for r in removals})
            return report

        report: IndexReport = await self._write(work)
        return report

    # --- reads -----------------------------------------------------------------------------

    def _array_has(self, column: Any, values: Sequence[str], mode: str) -> ColumnElement[bool]:
        """A JSON array column holds all (or any) of `values`."""
        if self._postgres:
            col = type_coerce(column, JSONB)
            if mode == "all":
                all_: ColumnElement[bool] = col.contains(list(values))
                return all_
            any_: ColumnElement[bool] = col.has_any(sql_cast(list(values), ARRAY(String)))
            return any_

        def has(wanted: list[str]) -> ColumnElement[bool]:
            each = func.json_each(column).table_valued("value")
            return exists(select(1).select_from(each).where(each.c.value.in_(wanted)))

        if mode == "any":
            return has(list(values))
        return and_(*(has([v]) for v in values))

    def conditions(self, space: Space, tenant_id: str, f: Filters) -> list[ColumnElement[bool]]:
        """The tenant and the structured filters on `vector_documents` (live rows only)."""
        conds: list[ColumnElement[bool]] = [
            VD.c.space == space.key,
            VD.c.tenant_id == tenant_id,
            VD.c.live.is_(True),
        ]
        if f.collection is not None:
            conds.append(VD.c.collection == f.collection)
        if f.tags:
            conds.append(self._array_has(VD.c.tags, f.tags, f.tags_mode))
        if f.metadata:
            conds.append(self._array_has(VD.c.meta, [f"{k}={v}" for k, v in f.metadata], "all"))
        if f.created_after is not None:
            conds.append(VD.c.created_at > f.created_after)
        if f.created_before is not None:
            conds.append(VD.c.created_at < f.created_before)
        return conds

    async def query(self, space: Space, q: VectorQuery) -> list[ChunkHit]:
        check_dimension(space, q.vector, "the query vector")
        if q.limit <= 0:
            return []
        try:
            return await self._reads.run(lambda conn: self._query(conn, space, q))
        except DOWN as exc:
            raise VectorsUnavailable(f"{self.name}: {exc}") from exc

    @staticmethod
    def _join() -> Any:
        return VC.join(
            VD,
            and_(
                VD.c.space == VC.c.space,
                VD.c.tenant_id == VC.c.tenant_id,
                VD.c.document_id == VC.c.document_id,
            ),
        )

    async def _query(self, conn: AsyncConnection, space: Space, q: VectorQuery) -> list[ChunkHit]:
        # One read transaction: the generation, then (if the cache is not current) the vectors,
        # which are at least as new as the generation they are cached under.
        generation = (
            await conn.execute(
                select(VG.c.generation).where(
                    VG.c.space == space.key, VG.c.tenant_id == q.tenant_id
                )
            )
        ).scalar()
        if generation is None:  # nothing was ever written for this tenant in this space
            return []
        tenant = await self._tenant_vectors(conn, space, q.tenant_id, int(generation))
        if q.filters.empty:
            rows = None  # every chunk stored is a live document's: no SQL needed
        else:
            # The filters in SQL, on the small columns only; the vectors come from the cache.
            stmt = (
                select(VC.c.document_id, VC.c.chunk)
                .select_from(self._join())
                .where(*self.conditions(space, q.tenant_id, q.filters))
            )
            found = (await conn.execute(stmt)).all()
            picked = [tenant.rows.get((r.document_id, r.chunk)) for r in found]
            rows = np.asarray([i for i in picked if i is not None], dtype=np.intp)
            if not len(rows):
                return []
        matrix = tenant.matrix if rows is None else tenant.matrix[rows]
        scores = matrix @ unit(q.vector)
        best: dict[str, tuple[int, float]] = {}  # document → (its best chunk, score)
        for i in np.argsort(-scores, kind="stable"):
            row = int(i) if rows is None else int(rows[i])
            doc, chunk = tenant.keys[row]
            if doc not in best:
                best[doc] = (chunk, float(scores[i]))
                if len(best) == q.limit:
                    break
        return await self._hits(conn, space, q.tenant_id, best)

    async def _tenant_vectors(
        self, conn: AsyncConnection, space: Space, tenant_id: str, generation: int
    ) -> TenantVectors:
        """A tenant's vectors in a space as one matrix, from the cache while its generation is
        current (least recently used ones evicted past `cache_bytes`)."""
        key = (space.key, tenant_id)
        cached = self._cache.get(key)
        if cached is not None and cached.generation == generation:
            self._cache.move_to_end(key)
            return cached
        stmt = select(VC.c.document_id, VC.c.chunk, VC.c.vector).where(
            VC.c.space == space.key, VC.c.tenant_id == tenant_id
        )
        found = (await conn.execute(stmt)).all()
        keys = [(r.document_id, int(r.chunk)) for r in found]
        matrix = np.frombuffer(b"".join(r.vector for r in found), dtype="<f4").reshape(
            len(found), space.dimension
        )
        made = TenantVectors(generation, keys, {k: i for i, k in enumerate(keys)}, matrix)
        self._cache.pop(key, None)
        if matrix.nbytes <= self.cache_bytes:
            self._cache[key] = made
            while sum(t.matrix.nbytes for t in self._cache.values()) > self.cache_bytes:
                self._cache.popitem(last=False)
        return made

    async def _hits(
        self,
        conn: AsyncConnection,
        space: Space,
        tenant_id: str,
        best: dict[str, tuple[int, float]],
    ) -> list[ChunkHit]:
        """The winners' chunk texts and versions, in `best`'s order."""
        stmt = (
            select(
                VC.c.document_id,
                VC.c.chunk,
                VC.c.start_offset,
                VC.c.end_offset,
                VC.c.text,
                VD.c.version,
            )
            .select_from(self._join())
            .where(
                VC.c.space == space.key,
                VC.c.tenant_id == tenant_id,
                # The documents (a primary-key prefix); the chunk is picked below: a row-value
                # IN is not an index lookup on SQLite.
                VC.c.document_id.in_(list(best)),
            )
        )
        found = {
            r.document_id: r
            for r in (await conn.execute(stmt)).all()
            if r.chunk == best[r.document_id][0]
        }
        hits = []
        for doc, (_chunk, score) in best.items():
            r = found.get(doc)
            if r is None:  # deleted between the two statements
                continue
            hits.append(
                ChunkHit(
                    document_id=doc,
                    version=int(r.version),
                    chunk=int(r.chunk),
                    start=int(r.start_offset),
                    end=int(r.end_offset),
                    text=r.text,
                    score=score,
                )
            )
        return hits

    async def versions(
        self, space: Space, tenant_id: str | None = None
    ) -> dict[tuple[str, str], int]:
        stmt = select(VD.c.tenant_id, VD.c.document_id, VD.c.version).where(
            VD.c.space == space.key, VD.c.live.is_(True)
        )
        if tenant_id is not None:
            stmt = stmt.where(VD.c.tenant_id == tenant_id)
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        except DOWN as exc:
            raise VectorsUnavailable(f"{self.name}: {exc}") from exc
        return {(r.tenant_id, r.document_id): int(r.version) for r in rows}
