"""Migration 0006 analyzes the documents written before it, and its downgrade gives back the
previous full-text index: on SQLite and PostgreSQL alike."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import inspect, text

from capstan.db.engine import create_engine
from capstan.db.migrate import downgrade, upgrade
from capstan.search.port import SearchQuery

INSERT_TENANT = "INSERT INTO tenants (id, name, created_at) VALUES (:id, :id, :now)"
INSERT_DOC = (
    "INSERT INTO documents (id, tenant_id, collection, title, body, tags, metadata, version, "
    "created_at, updated_at) VALUES (:id, :tenant, 'c', :title, :body, :tags, '{}', 1, :now, :now)"
)


async def search(url: str, tenant: str, q: str) -> list[str]:
    from capstan.search.postgres_fts import PostgresFts
    from capstan.search.sqlite_fts import SqliteFts

    engine = create_engine(url, pool_size=1)
    try:
        fts = SqliteFts(engine) if url.startswith("sqlite") else PostgresFts(engine)
        return [h.id for h in (await fts.query(SearchQuery(tenant_id=tenant, text=q))).hits]
    finally:
        await engine.dispose()


async def test_existing_documents_are_analyzed_and_downgrade_restores(empty_database: str) -> None:
    # Given a document written before the analysis existed,
    await upgrade(empty_database, "0003_search")
    await upgrade(empty_database, "0004_tasks")
    tenant, doc = str(uuid.uuid4()), str(uuid.uuid4())
    engine = create_engine(empty_database, pool_size=1)
    try:
        async with engine.begin() as conn:
            # SQLite stores times as text; asyncpg wants a datetime.
            now: object = "2024-01-01 00:00:00.000000+00:00"
            if not empty_database.startswith("sqlite"):
                now = datetime(2024, 1, 1, tzinfo=UTC)
            await conn.execute(text(INSERT_TENANT), {"id": tenant, "now": now})
            await conn.execute(
                text(INSERT_DOC),
                {
                    "id": doc,
                    "tenant": tenant,
                    "title": "Serializer helpers",
                    "body": "Call json_tools.parseDocument on formatted files.",
                    "tags": '["Café"]',
                    "now": now,
                },
            )
    finally:
        await engine.dispose()
    # when the migration runs, then it is found through the analysis,
    await upgrade(empty_database)
    assert await search(empty_database, tenant, "serializing files") == [doc]
    assert await search(empty_database, tenant, "parseDocument cafe") == [doc]
    # and the downgrade gives back the exact-word index.
    await downgrade(empty_database, "0004_tasks")
    engine = create_engine(empty_database, pool_size=1)
    try:
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("documents")}
            )
    finally:
        await engine.dispose()
    assert not {"terms_title", "terms_norm"} & columns
