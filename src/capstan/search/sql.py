"""Search answered by the database: structured predicates for every engine (the merge checks
Elasticsearch's candidates against them), and full text with PostgreSQL FTS or SQLite FTS5.

This module is the one place that knows how the two dialects differ for search:

- full-text match: PostgreSQL `documents.search_vector @@ plainto_tsquery('simple', q)` (a
  generated column with a GIN index); SQLite `documents_fts MATCH '"tok" "tok"'` (FTS5 table
  kept by triggers);
- score: `ts_rank_cd` (higher is better) vs FTS5 `bm25` (lower is better); both are turned
  into "ascending is best first" for ordering and reported as "higher is better";
- highlights: `ts_headline` vs `snippet()`;
- tags: JSONB `@>` / `?|` (GIN) vs `json_each`;
- metadata: `metadata ->> 'k'` vs `json_type` / `json_extract`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from capstan.db.replica import ReadRouter
from capstan.db.schema import Document
from capstan.search.port import (
    Filters,
    Hit,
    IndexDoc,
    IndexReport,
    Removal,
    SearchQuery,
    SearchResult,
    SearchUnavailable,
)

D = Document.__table__
FACET_SIZE = 20
TOKEN = re.compile(r"\w+", re.UNICODE)


def parse_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


class DatabaseSearch:
    """Shared by PostgresFts and SqliteFts; subclasses supply the full-text pieces."""

    name: str = "database"
    store: str = "database"  # how the structured engine is named in `engines`
    derived: ClassVar[bool] = False

    def __init__(self, engine: AsyncEngine, reads: ReadRouter | None = None) -> None:
        self._engine = engine
        # Queries may run on a read replica (capstan.db.replica); the engine stays the primary.
        self._reads = reads or ReadRouter(engine)

    # --- the port --------------------------------------------------------------------------

    async def ping(self) -> None:
        raise NotImplementedError

    async def index(self, docs: Sequence[IndexDoc]) -> IndexReport:
        # The database keeps its full-text index in the write transaction: nothing to do.
        return IndexReport(applied=len(docs))

    async def delete(self, removals: Sequence[Removal]) -> IndexReport:
        return IndexReport(applied=len(removals))

    async def refresh(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def query(self, q: SearchQuery) -> SearchResult:
        try:
            return await self._reads.run(lambda conn: self._query(conn, q))
        except (OperationalError, DBAPIError, OSError) as exc:
            raise SearchUnavailable(f"{self.name}: {exc}") from exc

    async def verify(
        self, tenant_id: str, ids: Sequence[str], filters: Filters
    ) -> dict[str, tuple[int, str]]:
        """Of `ids`, those that exist in the tenant and satisfy `filters`: id → (version,
        title). The merge keeps only these, so the index can never show a deleted document."""
        if not ids:
            return {}
        conds = [*self.structured(tenant_id, filters), D.c.id.in_(list(ids))]
        stmt = select(D.c.id, D.c.version, D.c.title).where(*conds)

        async def verified(conn: AsyncConnection) -> dict[str, tuple[int, str]]:
            rows = (await conn.execute(stmt)).all()
            return {r.id: (r.version, r.title) for r in rows}

        return await self._reads.run(verified)

    # --- structured predicates -------------------------------------------------------------

    def structured(self, tenant_id: str, f: Filters) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = [D.c.tenant_id == tenant_id]
        if f.collection is not None:
            conds.append(D.c.collection == f.collection)
        if f.tags:
            conds.append(self._tags(f.tags, f.tags_mode))
        if f.created_after is not None:
            conds.append(D.c.created_at > f.created_after)
        if f.created_before is not None:
            conds.append(D.c.created_at < f.created_before)
        for key, value in f.metadata:
            conds.append(self._metadata(key) == value)
        return conds

    def _tags(self, tags: tuple[str, ...], mode: str) -> ColumnElement[bool]:
        raise NotImplementedError

    def _metadata(self, key: str) -> ColumnElement[Any]:
        raise NotImplementedError

    # --- full text (subclasses) ------------------------------------------------------------

    def _fts(self, text_: str) -> tuple[Any, list[ColumnElement[bool]], ColumnElement[Any]]:
        """(extra FROM joins applied to a select, match conditions, order-by score expression
        where *smaller sorts first*)."""
        raise NotImplementedError

    def _score_out(self, raw: float) -> float:
        return raw

    async def _highlights(
        self, conn: AsyncConnection, text_: str, ids: list[str]
    ) -> dict[str, list[str]]:
        raise NotImplementedError

    async def _tag_facets(
        self, conn: AsyncConnection, base: Any, conds: list[ColumnElement[bool]]
    ) -> dict[str, int]:
        raise NotImplementedError

    # --- the query -------------------------------------------------------------------------

    async def _query(self, conn: AsyncConnection, q: SearchQuery) -> SearchResult:
        conds = self.structured(q.tenant_id, q.filters)
        base: Any = D
        order_score: ColumnElement[Any] | None = None
        text_ = (q.text or "").strip()
        if text_:
            base, match, order_score = self._fts(text_)
            conds += match
        page_conds = list(conds)
        sort = q.sort if text_ or q.sort != "relevance" else "created"
        if sort == "relevance" and order_score is not None:
            order = [order_score.asc(), D.c.id.asc()]
            key_cols: list[Any] = [order_score, D.c.id]
            if q.after is not None:
                s, i = float(q.after[0]), str(q.after[1])
                page_conds.append(or_(order_score > s, and_(order_score == s, D.c.id > i)))
        else:
            col = D.c.created_at if sort == "created" else D.c.updated_at
            order = [col.desc(), D.c.id.desc()]
            key_cols = [col, D.c.id]
            if q.after is not None:
                t, i = parse_time(q.after[0]), str(q.after[1])
                page_conds.append(or_(col < t, and_(col == t, D.c.id < i)))
        score_col = (order_score if order_score is not None else literal_column("NULL")).label(
            "score"
        )
        stmt = (
            select(D.c.id, D.c.title, D.c.version, score_col, *key_cols)
            .select_from(base)
            .where(*page_conds)
            .order_by(*order)
            .limit(q.limit + 1)
        )
        if q.after is None and q.offset:
            stmt = stmt.offset(q.offset)
        rows = (await conn.execute(stmt)).all()
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        hits = []
        for r in rows:
            key_raw = r[4]
            key0: Any = key_raw.isoformat() if isinstance(key_raw, datetime) else key_raw
            hits.append(
                Hit(
                    id=r.id,
                    title=r.title,
                    score=None if r.score is None else self._score_out(float(r.score)),
                    version=r.version,
                    key=(key0, r.id),
                )
            )
        if text_ and q.with_highlights and hits:
            marks = await self._highlights(conn, text_, [h.id for h in hits])
            for h in hits:
                h.highlights = marks.get(h.id, [])
        total = int(
            (await conn.execute(select(func.count()).select_from(base).where(*conds))).scalar_one()
        )
        facets: dict[str, dict[str, int]] = {}
        if q.with_facets:
            coll = (
                select(D.c.collection, func.count().label("n"))
                .select_from(base)
                .where(*conds)
                .group_by(D.c.collection)
                .order_by(func.count().desc(), D.c.collection)
                .limit(FACET_SIZE)
            )
            facets["collections"] = {r[0]: int(r[1]) for r in (await conn.execute(coll)).all()}
            facets["tags"] = await self._tag_facets(conn, base, conds)
        return SearchResult(hits=hits, total=total, facets=facets, more=more)


class PostgresSearch(DatabaseSearch):
    name = "postgres-fts"
    store = "postgresql"

    def _tags(self, tags: tuple[str, ...], mode: str) -> ColumnElement[bool]:
        col = type_coerce(D.c.tags, JSONB)
        if mode == "all":
            all_: ColumnElement[bool] = col.contains(list(tags))
            return all_
        any_: ColumnElement[bool] = col.has_any(cast(list(tags), ARRAY(String)))
        return any_

    def _metadata(self, key: str) -> ColumnElement[Any]:
        value: ColumnElement[Any] = type_coerce(D.c["metadata"], JSONB)[key].astext
        return value

    def _tsquery(self, text_: str) -> ColumnElement[Any]:
        return func.plainto_tsquery(literal_column("'simple'::regconfig"), text_)

    def _fts(self, text_: str) -> tuple[Any, list[ColumnElement[bool]], ColumnElement[Any]]:
        vector: ColumnElement[Any] = literal_column("documents.search_vector")
        tsq = self._tsquery(text_)
        # Negated so that ascending order is best-first, like SQLite's bm25.
        return D, [vector.op("@@")(tsq)], -func.ts_rank_cd(vector, tsq)

    def _score_out(self, raw: float) -> float:
        return -raw

    async def _highlights(
        self, conn: AsyncConnection, text_: str, ids: list[str]
    ) -> dict[str, list[str]]:
        tsq = self._tsquery(text_)
        cfg: ColumnElement[Any] = literal_column("'simple'::regconfig")
        opts = "StartSel=<em>, StopSel=</em>, MaxFragments=2, MaxWords=20, MinWords=5"
        stmt = select(
            D.c.id,
            func.ts_headline(cfg, D.c.title, tsq, "StartSel=<em>, StopSel=</em>, HighlightAll=1"),
            func.ts_headline(cfg, func.left(D.c.body, 100_000), tsq, opts),
        ).where(D.c.id.in_(ids))
        return _fragments((await conn.execute(stmt)).all())

    async def _tag_facets(
        self, conn: AsyncConnection, base: Any, conds: list[ColumnElement[bool]]
    ) -> dict[str, int]:
        tag = func.jsonb_array_elements_text(type_coerce(D.c.tags, JSONB)).table_valued("value")
        stmt = (
            select(tag.c.value, func.count().label("n"))
            .select_from(base)
            .join(tag, literal_column("true"))
            .where(*conds)
            .group_by(tag.c.value)
            .order_by(func.count().desc(), tag.c.value)
            .limit(FACET_SIZE)
        )
        return {r[0]: int(r[1]) for r in (await conn.execute(stmt)).all()}


FTS: ColumnElement[Any] = literal_column("documents_fts")


class SqliteSearch(DatabaseSearch):
    name = "sqlite-fts5"
    store = "sqlite"

    def _tags(self, tags: tuple[str, ...], mode: str) -> ColumnElement[bool]:
        def has(values: list[str]) -> ColumnElement[bool]:
            each = func.json_each(D.c.tags).table_valued("value")
            return exists(select(1).select_from(each).where(each.c.value.in_(values)))

        if mode == "any":
            return has(list(tags))
        return and_(*(has([t]) for t in tags))

    def _metadata(self, key: str) -> ColumnElement[Any]:
        path = f'$."{key}"'
        kind = func.json_type(D.c["metadata"], path)
        return case(
            (kind == "true", "true"),
            (kind == "false", "false"),
            else_=cast(func.json_extract(D.c["metadata"], path), String),
        )

    @staticmethod
    def match_expression(text_: str) -> str | None:
        tokens = TOKEN.findall(text_)
        return " ".join(f'"{t}"' for t in tokens) if tokens else None

    def _fts(self, text_: str) -> tuple[Any, list[ColumnElement[bool]], ColumnElement[Any]]:
        expr = self.match_expression(text_)
        fts: ColumnElement[Any] = literal_column("documents_fts")
        from sqlalchemy import table

        fts_t = table("documents_fts")
        map_t = table("documents_fts_map")
        base = fts_t.join(
            map_t, literal_column("documents_fts_map.id") == literal_column("documents_fts.rowid")
        ).join(D, D.c.id == literal_column("documents_fts_map.doc_id"))
        if expr is None:
            return base, [false()], func.bm25(fts, 2.0, 1.0)
        return base, [fts.op("MATCH")(expr)], func.bm25(fts, 2.0, 1.0)

    def _score_out(self, raw: float) -> float:
        return -raw

    async def _highlights(
        self, conn: AsyncConnection, text_: str, ids: list[str]
    ) -> dict[str, list[str]]:
        expr = self.match_expression(text_)
        if expr is None:
            return {}
        from sqlalchemy import table

        stmt = (
            select(
                literal_column("documents_fts_map.doc_id"),
                func.snippet(FTS, 0, "<em>", "</em>", "…", 32),
                func.snippet(FTS, 1, "<em>", "</em>", "…", 16),
            )
            .select_from(
                table("documents_fts").join(
                    table("documents_fts_map"),
                    literal_column("documents_fts_map.id") == literal_column("documents_fts.rowid"),
                )
            )
            .where(FTS.op("MATCH")(expr), literal_column("documents_fts_map.doc_id").in_(ids))
        )
        return _fragments((await conn.execute(stmt)).all())

    async def _tag_facets(
        self, conn: AsyncConnection, base: Any, conds: list[ColumnElement[bool]]
    ) -> dict[str, int]:
        tag = func.json_each(D.c.tags).table_valued("value")
        stmt = (
            select(tag.c.value, func.count().label("n"))
            .select_from(base)
            .join(tag, literal_column("1") == literal_column("1"))
            .where(*conds)
            .group_by(tag.c.value)
            .order_by(func.count().desc(), tag.c.value)
            .limit(FACET_SIZE)
        )
        return {r[0]: int(r[1]) for r in (await conn.execute(stmt)).all()}


def _fragments(rows: Any) -> dict[str, list[str]]:
    """Highlight rows (id, title, body) → the fragments that contain a match, per document."""
    return {
        doc_id: [frag for frag in (title, body) if frag and "<em>" in frag]
        for doc_id, title, body in rows
    }
