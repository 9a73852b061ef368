"""Search answered by the database: structured predicates for every engine (the merge checks
Elasticsearch's candidates against them), and full text with PostgreSQL FTS or SQLite FTS5.

Both match the analyzed terms the application stores (`terms_*` columns, search/analysis.py)
with the query semantics of search/query.py. This module is the one place that knows how the
two dialects differ for search:

- full-text match: PostgreSQL `documents.search_vector @@ to_tsquery('simple', ...)` (a
  generated column over the terms with a GIN index); SQLite `documents_fts MATCH '"t" OR ...'`
  (FTS5 table kept by triggers), evaluated once per statement in a materialized CTE, so the
  count and the facets join the FTS hits instead of testing MATCH row by row;
- per-term matches (minimum should match, the rank tier): `vector @@ term` vs
  `rowid IN (SELECT rowid ... MATCH term)`;
- relevance: `ts_rank` with weights A title, B tags, D body vs FTS5 `bm25` with column weights;
  both reported as "higher is better" after the tier (`TIER * matched terms`);
- tags: JSONB `@>` / `?|` (GIN) vs `json_each`;
- metadata: `metadata ->> 'k'` vs `json_type` / `json_extract`.
Highlights are made in Python (search/highlight.py) for every engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    ColumnElement,
    Float,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    table,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from capstan.db.replica import ReadRouter
from capstan.db.schema import Document
from capstan.search.analysis import MAX_BODY_CHARS
from capstan.search.highlight import highlight
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
from capstan.search.query import FIELD_WEIGHTS, TIER, ParsedQuery, idf, parse

D = Document.__table__
FACET_SIZE = 20


def parse_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


@dataclass(slots=True)
class FullText:
    """A dialect's answer to a parsed query: what to select from, the match conditions, and
    per row the exact and any-way matched term counts and the relevance (search/query.py)."""

    base: Any
    conds: list[ColumnElement[bool]]
    exact: ColumnElement[Any]
    matched: ColumnElement[Any]
    relevance: ColumnElement[Any]


def _count(flags: Sequence[ColumnElement[bool]]) -> ColumnElement[Any]:
    if not flags:
        return literal(0)
    total: ColumnElement[Any] = case((flags[0], 1), else_=0)
    for flag in flags[1:]:
        total = total + case((flag, 1), else_=0)
    return total


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

    async def texts(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """id → (title, body up to the analyzed length), for highlighting."""
        if not ids:
            return {}
        stmt = select(D.c.id, D.c.title, func.substr(D.c.body, 1, MAX_BODY_CHARS)).where(
            D.c.id.in_(list(ids))
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {r[0]: (r[1], r[2]) for r in rows}

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

    def _fts(self, parsed: ParsedQuery, idfs: Sequence[float]) -> FullText:
        """`idfs`: one per `parsed.ranked()` item."""
        raise NotImplementedError

    def _matches(self, forms: Sequence[str], field: str | None = None) -> ColumnElement[bool]:
        """Documents where any of `forms` (a term or a phrase of terms) is in `field` (any field
        if None)."""
        raise NotImplementedError

    async def _stats(
        self, conn: AsyncConnection, tenant_id: str, ranked: Sequence[tuple[str, ...]]
    ) -> list[float]:
        """The idf of each ranked item over the tenant's documents."""
        count = select(func.count()).select_from(D).where(D.c.tenant_id == tenant_id)
        dfs = [count.where(self._matches(forms)).scalar_subquery() for forms in ranked]
        row = (await conn.execute(select(count.scalar_subquery(), *dfs))).one()
        return [idf(int(row[0]), int(df)) for df in row[1:]]

    def _relevance(
        self, parsed: ParsedQuery, idfs: Sequence[float], field_match: Any
    ) -> ColumnElement[Any]:
        """norm * sum of idf * the weight of the best field each ranked item is in."""
        total: ColumnElement[Any] = literal(0.0)
        for forms, weight in zip(parsed.ranked(), idfs, strict=True):
            best = case(
                *((field_match(forms, f), w * weight) for f, w in FIELD_WEIGHTS.items()),
                else_=0.0,
            )
            total = total + best
        return D.c.terms_norm * total

    def _tag_values(self, tags: ColumnElement[Any]) -> Any:
        """A table-valued function with one `value` row per tag of a JSON array column."""
        raise NotImplementedError

    async def _total_and_facets(
        self, conn: AsyncConnection, base: Any, conds: list[ColumnElement[bool]], facets: bool
    ) -> tuple[int, dict[str, dict[str, int]]]:
        """The match count and the facets in one statement: the matching rows once (a
        materialized CTE), then the count, the collections and the tags over them."""
        matched = (
            select(D.c.collection, D.c.tags)
            .select_from(base)
            .where(*conds)
            .cte("matched")
            .prefix_with("MATERIALIZED")
        )
        total = select(literal("n"), cast(literal(None), String), func.count()).select_from(matched)
        if not facets:
            return int((await conn.execute(total)).one()[2]), {}
        tag = self._tag_values(matched.c.tags)
        parts = [
            total,
            select(literal("c"), matched.c.collection, func.count()).group_by(matched.c.collection),
            select(literal("t"), tag.c.value, func.count())
            .select_from(matched)
            .join(tag, literal_column("1") == literal_column("1"))
            .group_by(tag.c.value),
        ]
        groups: dict[str, list[tuple[str, int]]] = {"c": [], "t": []}
        n = 0
        for kind, key, count in (await conn.execute(union_all(*parts))).all():
            if kind == "n":
                n = int(count)
            else:
                groups[kind].append((key, int(count)))

        def top(pairs: list[tuple[str, int]]) -> dict[str, int]:
            return dict(sorted(pairs, key=lambda p: (-p[1], p[0]))[:FACET_SIZE])

        return n, {"collections": top(groups["c"]), "tags": top(groups["t"])}

    # --- the query -------------------------------------------------------------------------

    async def _query(self, conn: AsyncConnection, q: SearchQuery) -> SearchResult:
        conds = self.structured(q.tenant_id, q.filters)
        base: Any = D
        order_score: ColumnElement[Any] | None = None
        counts: list[Any] = [literal_column("NULL"), literal_column("NULL")]
        text_ = (q.text or "").strip()
        parsed = parse(text_, typos=q.typos) if text_ else None
        weights: tuple[float, ...] = ()
        if parsed is not None:
            if parsed.empty:
                empty: dict[str, dict[str, int]] = {"collections": {}, "tags": {}}
                return SearchResult(hits=[], total=0, facets=empty if q.with_facets else {})
            weights = (
                q.weights
                if q.weights is not None
                else tuple(await self._stats(conn, q.tenant_id, parsed.ranked()))
            )
            fts = self._fts(parsed, weights)
            base = fts.base
            conds += fts.conds
            score = TIER * (fts.exact + fts.matched) + fts.relevance
            # Negated so that ascending order is best-first.
            order_score = cast(-score, Float)
            counts = [fts.exact, fts.matched]
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
            select(
                D.c.id,
                D.c.title,
                D.c.version,
                score_col,
                counts[0].label("exact"),
                counts[1].label("matched"),
                *key_cols,
            )
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
            key_raw = r[6]
            key0: Any = key_raw.isoformat() if isinstance(key_raw, datetime) else key_raw
            hits.append(
                Hit(
                    id=r.id,
                    title=r.title,
                    score=None if r.score is None else -float(r.score),
                    version=r.version,
                    key=(key0, r.id),
                    match=None if parsed is None else parsed.rule(int(r.exact), int(r.matched)),
                )
            )
        if parsed is not None and q.with_highlights and hits:
            words = set(parsed.words())
            stmt_t = select(D.c.id, D.c.title, func.substr(D.c.body, 1, MAX_BODY_CHARS)).where(
                D.c.id.in_([h.id for h in hits])
            )
            found = {r[0]: (r[1], r[2]) for r in (await conn.execute(stmt_t)).all()}
            for h in hits:
                title, body = found.get(h.id, (h.title, ""))
                h.highlights = highlight(title, body, words)
        total, facets = await self._total_and_facets(conn, base, conds, q.with_facets)
        return SearchResult(hits=hits, total=total, facets=facets, more=more, weights=weights)


CFG = "'simple'::regconfig"


# The tsvector weight of each field (migration 0006): title A, tags B, body D.
PG_WEIGHTS = {"title": "A", "tags": "B", "body": "D"}


def _pg_or(items: Sequence[str], weight: str | None = None) -> str:
    """A to_tsquery text matching any of `items`, each an analyzed term or a phrase of terms
    separated by spaces (terms hold letters and digits only, so quoting is safe), in the field
    of `weight` if given."""
    label = f":{weight}" if weight else ""
    return " | ".join(
        "(" + " <-> ".join(f"'{w}'{label}" for w in item.split()) + ")" for item in items
    )


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

    def _matches(self, forms: Sequence[str], field: str | None = None) -> ColumnElement[bool]:
        query = func.to_tsquery(literal_column(CFG), _pg_or(forms, PG_WEIGHTS.get(field or "")))
        matched: ColumnElement[bool] = literal_column("documents.search_vector").op("@@")(query)
        return matched

    def _fts(self, parsed: ParsedQuery, idfs: Sequence[float]) -> FullText:
        has = self._matches
        cfg: ColumnElement[Any] = literal_column(CFG)

        def phrase(ws: Sequence[str]) -> ColumnElement[bool]:
            query = func.phraseto_tsquery(cfg, " ".join(ws))
            matched: ColumnElement[bool] = literal_column("documents.search_vector").op("@@")(query)
            return matched

        conds: list[ColumnElement[bool]] = []
        exact = [has(t.forms) for t in parsed.terms]
        matched = [
            or_(e, has(t.variants)) if t.variants else e
            for e, t in zip(exact, parsed.terms, strict=True)
        ]
        if parsed.terms:
            # Any term (or variant): the GIN index finds the candidates.
            conds.append(has([item for t in parsed.terms for item in (*t.forms, *t.variants)]))
            if parsed.required > 1:
                conds.append(_count(matched) >= parsed.required)
        conds += [phrase(p) for p in parsed.phrases]
        conds += [not_(phrase(p)) for p in parsed.excluded]
        relevance = self._relevance(parsed, idfs, has)
        return FullText(D, conds, _count(exact), _count(matched), relevance)

    def _tag_values(self, tags: ColumnElement[Any]) -> Any:
        return func.jsonb_array_elements_text(type_coerce(tags, JSONB)).table_valued("value")


FTS: ColumnElement[Any] = literal_column("documents_fts")
FTS_T = table("documents_fts")
MAP_T = table("documents_fts_map")


def _fts5(words: Sequence[str], op: str = " OR ") -> str:
    """An FTS5 expression: each term (or phrase of terms) as a string; analyzed terms hold
    letters and digits only, so no quote needs escaping."""
    return op.join(f'"{w}"' for w in words)


def _rows_matching(expr: str) -> Any:
    return select(literal_column("rowid")).select_from(FTS_T).where(FTS.op("MATCH")(expr))


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

    def _matches(self, forms: Sequence[str], field: str | None = None) -> ColumnElement[bool]:
        # Documents by id (for `_stats`); `_fts` tests its FTS hits' rowids directly.
        expr = _fts5(forms)
        rows = _rows_matching(f"{field} : ({expr})" if field else expr)
        mapped: Any = (
            select(literal_column("doc_id"))
            .select_from(MAP_T)
            .where(literal_column("id").in_(rows))
        )
        return D.c.id.in_(mapped)

    def _fts(self, parsed: ParsedQuery, idfs: Sequence[float]) -> FullText:
        if parsed.terms:
            expr = _fts5([item for t in parsed.terms for item in (*t.forms, *t.variants)])
        else:
            expr = " AND ".join(f'"{" ".join(p)}"' for p in parsed.phrases)
        # The FTS hits once per statement (MATERIALIZED): the page, the count and the facets
        # join them to documents rather than testing MATCH on each of the tenant's rows.
        hits = (
            select(
                literal_column("documents_fts_map.doc_id").label("doc_id"),
                literal_column("documents_fts.rowid").label("rid"),
            )
            .select_from(
                FTS_T.join(
                    MAP_T,
                    literal_column("documents_fts_map.id") == literal_column("documents_fts.rowid"),
                )
            )
            .where(FTS.op("MATCH")(expr))
            .cte("fts_hits")
            .prefix_with("MATERIALIZED")
        )
        rid = hits.c.rid

        def has(forms: Sequence[str], field: str | None = None) -> ColumnElement[bool]:
            expr = _fts5(forms)
            return rid.in_(_rows_matching(f"{field} : ({expr})" if field else expr))

        exact = [has(t.forms) for t in parsed.terms]
        matched = [
            or_(e, has(t.variants)) if t.variants else e
            for e, t in zip(exact, parsed.terms, strict=True)
        ]
        conds: list[ColumnElement[bool]] = []
        if parsed.required > 1:
            conds.append(_count(matched) >= parsed.required)
        conds += [rid.in_(_rows_matching(f'"{" ".join(p)}"')) for p in parsed.phrases]
        conds += [rid.not_in(_rows_matching(f'"{" ".join(p)}"')) for p in parsed.excluded]
        base = hits.join(D, D.c.id == hits.c.doc_id)
        relevance = self._relevance(parsed, idfs, has)
        return FullText(base, conds, _count(exact), _count(matched), relevance)

    def _tag_values(self, tags: ColumnElement[Any]) -> Any:
        return func.json_each(tags).table_valued("value")
