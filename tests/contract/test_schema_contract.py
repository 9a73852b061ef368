"""Migrations produce exactly the schema the code declares, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from capstan.db.engine import create_engine
from capstan.db.migrate import downgrade, upgrade
from capstan.db.schema import Base, include_for_dialect
from tests.conftest import _admin_sql, service_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'schema.db'}"
        return
    from sqlalchemy.engine import make_url

    base = service_url("postgres")
    name = f"capstan_schema_{uuid.uuid4().hex[:8]}"
    await _admin_sql(base, f'CREATE DATABASE "{name}"')
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    await _admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _diff(sync_conn: Any) -> list[Any]:
    opts = {"compare_type": True, "include_object": include_for_dialect(sync_conn.dialect.name)}
    context = MigrationContext.configure(sync_conn, opts=opts)
    return list(compare_metadata(context, Base.metadata))


async def test_upgrade_matches_the_declared_schema_and_round_trips(empty_database: str) -> None:
    await upgrade(empty_database)
    engine = create_engine(empty_database, pool_size=1)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"tenants", "api_keys", "documents", "outbox"} <= tables

        await downgrade(empty_database, "base")
        async with engine.connect() as conn:
            left = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert left <= {"alembic_version"}

        await upgrade(empty_database)
        await upgrade(empty_database)  # idempotent
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        assert version is not None
    finally:
        await engine.dispose()
