"""Which vector stores the settings give, and what `capstan doctor` says about them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from capstan.cli.doctor import _vectors
from capstan.db.engine import create_engine
from capstan.db.migrate import upgrade
from capstan.search.pgvector import PgVectors
from capstan.search.vector_es import ElasticsearchVectors
from capstan.search.vector_sql import SqlVectors
from capstan.search.vector_stores import build_vector_stores
from capstan.search.vectors import ChunkVector, DocumentVectors, Space, VectorQuery
from tests.conftest import _admin_sql, embedded_settings, service_url
from tests.search.test_vector_contract import T0, angle


async def test_embedded_gets_the_sqlite_store_only(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    engine = create_engine(settings.database_url)
    try:
        stores = build_vector_stores(settings, engine)
        assert isinstance(stores.database, SqlVectors) and stores.index is None
        assert stores.database.name == "sqlite-vectors"
        await stores.close()
    finally:
        await engine.dispose()
    check = await _vectors(settings)
    assert check.status == "ok" and "SQLite" in check.detail


async def test_a_search_url_adds_the_elasticsearch_store(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path).model_copy(
        update={"search_url": "http://127.0.0.1:9", "search_index": "mine"}
    )
    engine = create_engine(settings.database_url)
    try:
        stores = build_vector_stores(settings, engine)
        assert isinstance(stores.index, ElasticsearchVectors)
        assert stores.index.alias(Space("m", "1", 4)).startswith("mine-vectors-d4_")
        assert stores.all == [stores.database, stores.index]
        await stores.close()
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_uses_pgvector_and_doctor_says_so(postgres_url: str, tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path).model_copy(update={"database_url": postgres_url})
    engine = create_engine(postgres_url, pool_size=1)
    try:
        stores = build_vector_stores(settings, engine)
        assert isinstance(stores.database, PgVectors)
        await stores.database.ping()
        assert stores.database.name == "pgvector"
    finally:
        await engine.dispose()
    check = await _vectors(settings)
    assert check.status == "ok" and check.detail.startswith("pgvector 0.")


@pytest.mark.postgres
async def test_without_pgvector_postgres_scores_in_the_process(tmp_path: Path) -> None:
    """A database migrated where pgvector could not be enabled (simulated: the column
    dropped): the store still answers, exactly, and doctor warns with the fix."""
    base = service_url("postgres")
    name = f"capstan_novec_{uuid.uuid4().hex[:8]}"
    await _admin_sql(base, f'CREATE DATABASE "{name}"')
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url, pool_size=1)
    try:
        await upgrade(url)
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE vector_chunks DROP COLUMN embedding"))
            await conn.execute(text("DROP EXTENSION vector"))
        store = PgVectors(engine)
        space = Space("m", "1", 8)
        await store.ensure_space(space)
        chunks = (ChunkVector(0, 0, 4, "near", angle(0.1)),)
        await store.upsert(space, [DocumentVectors("t", "d", 1, "a", (), {}, T0, chunks)])
        hits = await store.query(space, VectorQuery("t", angle(0.0)))
        assert [(h.document_id, h.text) for h in hits] == [("d", "near")]
        assert store.name == "postgres-vectors" and store.pgvector is False
        check = await _vectors(embedded_settings(tmp_path).model_copy(update={"database_url": url}))
        assert check.status == "warn" and "not in use" in check.detail
        assert "CREATE EXTENSION" in check.fix
    finally:
        await engine.dispose()
        await _admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
async def test_a_role_that_may_not_create_the_extension_still_migrates(tmp_path: Path) -> None:
    """pgvector is not a trusted extension: migrating as a database owner who is not a
    superuser leaves it out (a warning), and the store works without it."""
    base = service_url("postgres")
    suffix = uuid.uuid4().hex[:8]
    role, name = f"capstan_owner_{suffix}", f"capstan_owner_{suffix}"
    await _admin_sql(base, f"CREATE ROLE {role} LOGIN PASSWORD 'owner' NOSUPERUSER")
    await _admin_sql(base, f'CREATE DATABASE "{name}" OWNER {role}')
    url = (
        make_url(base)
        .set(database=name, username=role, password="owner")
        .render_as_string(hide_password=False)
    )
    engine = create_engine(url, pool_size=1)
    try:
        await upgrade(url)
        async with engine.connect() as conn:
            extension = await conn.scalar(
                text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
            )
        assert extension is None
        store = PgVectors(engine)
        space = Space("m", "1", 8)
        chunks = (ChunkVector(0, 0, 4, "near", angle(0.1)),)
        await store.upsert(space, [DocumentVectors("t", "d", 1, "a", (), {}, T0, chunks)])
        assert [h.document_id for h in await store.query(space, VectorQuery("t", angle(0.0)))] == [
            "d"
        ]
        assert store.name == "postgres-vectors"
    finally:
        await engine.dispose()
        await _admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await _admin_sql(base, f"DROP ROLE IF EXISTS {role}")
