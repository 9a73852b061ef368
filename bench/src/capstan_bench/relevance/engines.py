"""The engines a relevance run compares, each loaded with the same corpus in a scratch place of
its own (a SQLite file, a PostgreSQL database, an Elasticsearch alias) and removed afterwards."""

from __future__ import annotations

import secrets
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from capstan.search.analysis import analyzed_text
from capstan.search.port import IndexDoc, SearchEngine, SearchQuery
from capstan_bench.relevance.corpus import CorpusDoc

T0 = datetime(2024, 1, 1, tzinfo=UTC)
Ask = Callable[[str, int], Awaitable[list[str]]]  # (query, k) → document keys, best first


@dataclass
class Loaded:
    name: str
    ask: Ask
    cleanup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for step in reversed(self.cleanup):
            await step()


def index_docs(tenant_id: str, corpus: Sequence[CorpusDoc]) -> list[IndexDoc]:
    """The corpus as documents; ids derive from the keys, so every engine breaks score ties
    (by id) the same way, as it does in production where one document has one id."""
    return [
        IndexDoc(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"capstan-relevance:{d.key}")),
            tenant_id=tenant_id,
            collection=d.collection,
            title=d.title,
            body=d.body,
            tags=d.tags,
            metadata={"key": d.key},
            version=1,
            created_at=T0 + timedelta(seconds=i),
            updated_at=T0 + timedelta(seconds=i),
        )
        for i, d in enumerate(corpus)
    ]


def _asker(engine: SearchEngine, tenant_id: str, keys: dict[str, str]) -> Ask:
    async def ask(text: str, k: int) -> list[str]:
        q = SearchQuery(
            tenant_id=tenant_id, text=text, limit=k, with_facets=False, with_highlights=False
        )
        return [keys[h.id] for h in (await engine.query(q)).hits]

    return ask


async def load_database(name: str, url: str, corpus: Sequence[CorpusDoc]) -> Loaded:
    """A migrated database at `url` (SQLite file or PostgreSQL) with the corpus as rows."""
    from sqlalchemy import insert

    from capstan.db.dialect import dialect_for
    from capstan.db.migrate import upgrade
    from capstan.db.schema import Document
    from capstan.search.postgres_fts import PostgresFts
    from capstan.search.sqlite_fts import SqliteFts
    from capstan.tenants.service import create_tenant

    await upgrade(url)
    dialect = dialect_for(url)
    engine = dialect.create_engine(url, pool_size=2)
    async with dialect.sessionmaker(engine).begin() as session:
        tenant_id = (await create_tenant(session, f"relevance-{secrets.token_hex(4)}")).tenant_id
    docs = index_docs(tenant_id, corpus)
    rows = [
        {
            "id": d.id,
            "tenant_id": d.tenant_id,
            "collection": d.collection,
            "title": d.title,
            "body": d.body,
            "tags": list(d.tags),
            "metadata": d.metadata,
            "version": 1,
            "created_at": d.created_at,
            "updated_at": d.updated_at,
        }
        for d in docs
    ]
    async with engine.begin() as conn:
        # The terms columns come from the insert default (capstan.db.schema._terms).
        await conn.execute(insert(Document.__table__), rows)  # type: ignore[arg-type]
    search: SearchEngine = dialect.choose(sqlite=SqliteFts, postgresql=PostgresFts)(engine)
    keys = {d.id: str(d.metadata["key"]) for d in docs}
    return Loaded(name, _asker(search, tenant_id, keys), [engine.dispose])


async def load_sqlite(corpus: Sequence[CorpusDoc]) -> Loaded:
    tmp = tempfile.TemporaryDirectory(prefix="capstan-relevance-")
    loaded = await load_database("sqlite-fts5", f"sqlite:///{Path(tmp.name) / 'r.db'}", corpus)

    async def remove() -> None:
        tmp.cleanup()

    loaded.cleanup.insert(0, remove)
    return loaded


async def load_postgres(server_url: str, corpus: Sequence[CorpusDoc]) -> Loaded:
    from capstan_bench.common import admin, with_database

    name = f"capstan_relevance_{secrets.token_hex(4)}"
    await admin(server_url, f'CREATE DATABASE "{name}"')

    async def drop() -> None:
        await admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    try:
        loaded = await load_database("postgres-fts", with_database(server_url, name), corpus)
    except BaseException:
        await drop()
        raise
    loaded.cleanup.insert(0, drop)
    return loaded


async def load_elasticsearch(url: str, corpus: Sequence[CorpusDoc]) -> list[Loaded]:
    """The Elasticsearch engine (Capstan's query), and Elasticsearch queried directly with a
    plain `multi_match` (OR) over the same analyzed fields: the baseline."""
    from capstan.search.elasticsearch import RANKED_FIELDS, ElasticsearchEngine

    es = ElasticsearchEngine(url, alias=f"capstan-relevance-{secrets.token_hex(4)}")
    tenant_id = "relevance"
    docs = index_docs(tenant_id, corpus)
    keys = {d.id: str(d.metadata["key"]) for d in docs}

    async def remove() -> None:
        await es.client.indices.delete(index=f"{es.alias}-*", ignore_unavailable=True)
        await es.close()

    try:
        for start in range(0, len(docs), 500):
            report = await es.index(docs[start : start + 500])
            if report.failed:
                raise RuntimeError(f"indexing failed: {next(iter(report.failed.values()))}")
        await es.refresh()
    except BaseException:
        await remove()
        raise

    async def direct(text: str, k: int) -> list[str]:
        body: dict[str, Any] = {
            "query": {
                "bool": {
                    "filter": [{"term": {"tenant_id": tenant_id}}],
                    "must": [
                        {"multi_match": {"query": analyzed_text(text), "fields": RANKED_FIELDS}}
                    ],
                }
            },
            "size": k,
            "_source": False,
        }
        found = await es.client.search(index=es.alias, **body)
        return [keys[h["_id"]] for h in found["hits"]["hits"]]

    async def nothing() -> None:
        return None

    return [
        Loaded("elasticsearch", _asker(es, tenant_id, keys), [remove]),
        Loaded("elasticsearch-direct", direct, [nothing]),
    ]
