"""Migration 0010 renders every existing document once, with the serializer the API uses, and
leaves a row it cannot render NULL (for `capstan data check --fix`)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.engine import create_engine
from capstan.db.migrate import downgrade, upgrade
from capstan.db.schema import Document
from capstan.documents.service import serialize

INSERT_TENANT = "INSERT INTO tenants (id, name, created_at) VALUES (:id, :id, :now)"
INSERT_DOC = (
    "INSERT INTO documents (id, tenant_id, collection, title, body, tags, metadata, version, "
    "created_at, updated_at) VALUES (:id, :tenant, 'c', :title, 'b', :tags, :meta, 3, :now, :now)"
)


async def test_existing_documents_are_rendered_as_the_api_serializes_them(
    empty_database: str,
) -> None:
    await upgrade(empty_database, "0009")
    tenant, good, bad = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    sqlite = empty_database.startswith("sqlite")
    # SQLite stores times as text; asyncpg wants a datetime.
    now: object = (
        "2024-01-01 10:00:00.123456"
        if sqlite
        else datetime(2024, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)
    )
    deep = '{"k": ' * 1500 + "1" + "}" * 1500  # json.loads recurses too deep: not renderable
    engine = create_engine(empty_database, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(INSERT_TENANT), {"id": tenant, "now": now})
            insert = text(
                INSERT_DOC
                if sqlite
                else INSERT_DOC.replace(":meta", "CAST(:meta AS jsonb)").replace(
                    ":tags", "CAST(:tags AS jsonb)"
                )
            )
            meta = json.dumps({"z": 1.0, "big": 12345678901234567890, "é": "\u2028"})
            await conn.execute(
                insert,
                {
                    "id": good,
                    "tenant": tenant,
                    "title": "T",
                    "tags": '["x"]',
                    "meta": meta,
                    "now": now,
                },
            )
            if sqlite:  # PostgreSQL refuses jsonb this deep
                await conn.execute(
                    insert,
                    {
                        "id": bad,
                        "tenant": tenant,
                        "title": "T",
                        "tags": "[]",
                        "meta": deep,
                        "now": now,
                    },
                )
    finally:
        await engine.dispose()

    assert await upgrade(empty_database, "0010") == ["0010"]

    engine = create_engine(empty_database, pool_size=1)
    try:
        async with engine.connect() as conn:
            rendered = dict((await conn.execute(select(Document.id, Document.rendered))).all())
        async with AsyncSession(engine) as session:
            doc = await session.get(Document, good)
            assert doc is not None
            expected = serialize(doc)  # what the API answered for this row before 0010
    finally:
        await engine.dispose()
    assert rendered[good] == expected
    assert rendered[good].startswith(f'{{"id":"{good}","collection":"c","title":"T"'.encode())
    assert b'"created_at":"2024-01-01T10:00:00.123456Z"' in rendered[good]
    if sqlite:
        assert rendered[bad] is None

    await downgrade(empty_database, "0009")
    engine = create_engine(empty_database, pool_size=1)
    try:
        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("documents")}
            )
    finally:
        await engine.dispose()
    assert "rendered" not in columns
