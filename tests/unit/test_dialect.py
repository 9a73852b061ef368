"""Each operation of capstan.db.dialect, on a migrated SQLite file and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from capstan.db.dialect import POSTGRESQL, SQLITE, Dialect, dialect_for, dialect_of
from capstan.db.fastpath import FastPath
from capstan.db.migrate import upgrade
from capstan.db.schema import Document, ProcessedEvent
from capstan.ids import uuid7
from capstan.settings import Settings
from capstan.tenants.service import create_tenant

PROCESSED: Any = ProcessedEvent.__table__


@dataclass
class Db:
    dialect: Dialect
    engine: AsyncEngine
    db: Any
    url: str


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'dialect.db'}"
        await upgrade(url)
    else:
        url = request.getfixturevalue("postgres_url")
    dialect = dialect_for(url)
    engine = dialect.create_engine(url, pool_size=4)
    yield Db(dialect, engine, dialect.sessionmaker(engine), url)
    await engine.dispose()


def test_the_url_names_the_dialect_once() -> None:
    assert dialect_for("sqlite:///x.db") is SQLITE
    assert dialect_for("sqlite+aiosqlite:///x.db") is SQLITE
    for url in ("postgresql://u@h/db", "postgres://u@h/db", "postgresql+asyncpg://u@h1,h2/db"):
        assert dialect_for(url) is POSTGRESQL
    with pytest.raises(ValueError, match="unsupported database URL scheme 'mysql'"):
        dialect_for("mysql://u@h/db")
    assert SQLITE.choose(sqlite="a", postgresql="b") == "a"
    assert POSTGRESQL.choose(sqlite="a", postgresql="b") == "b"
    assert SQLITE.is_file and not POSTGRESQL.is_file


def test_settings_refuse_a_database_they_have_no_dialect_for(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unsupported database URL scheme 'mysql'"):
        Settings(data_dir=tmp_path, database_url="mysql://u@h/db")
    with pytest.raises(ValidationError, match="database_read_url needs PostgreSQL"):
        Settings(data_dir=tmp_path, database_read_url="postgresql://u@h/db")  # SQLite primary
    assert Settings(data_dir=tmp_path).embedded


async def test_engine_and_sessions_are_of_the_dialect(database: Db) -> None:
    assert dialect_of(database.engine) is database.dialect
    async with database.db.begin() as session:
        assert dialect_of(session) is database.dialect
        assert await session.scalar(text("SELECT 1")) == 1


async def test_the_fast_path_exists_only_on_postgresql(database: Db) -> None:
    fast = database.dialect.fast_path(database.url, max_size=1)
    if database.dialect is SQLITE:
        assert fast is None
        return
    assert isinstance(fast, FastPath)
    try:
        assert dict(await fast.fetchrow("SELECT 41 + 1 AS n")) == {"n": 42}
    finally:
        await fast.close()


async def test_insert_ignore_inserts_once(database: Db) -> None:
    d, row = database.dialect, _processed()
    async with database.db.begin() as session:
        assert await d.insert_ignore(session, PROCESSED, row) is True
        assert await d.insert_ignore(session, PROCESSED, row) is False
    # The statement is built once per table and handed out again.
    assert d.insert_ignoring_conflicts(PROCESSED) is d.insert_ignoring_conflicts(PROCESSED)


async def test_insert_ignore_returning_returns_the_new_row_only(database: Db) -> None:
    d, row = database.dialect, _processed()
    column = ProcessedEvent.__table__.c.event_id
    async with database.db.begin() as session:
        assert await d.insert_ignore_returning(session, PROCESSED, row, column) == row["event_id"]
        assert await d.insert_ignore_returning(session, PROCESSED, row, column) is None


async def test_has_tag_matches_whole_elements_of_the_tags_array(database: Db) -> None:
    now = datetime.now(UTC)
    async with database.db.begin() as session:
        tenant = (await create_tenant(session, f"dialect-{secrets.token_hex(4)}")).tenant_id
        ids = {}
        for name, tags in {"a": ["red", "blue"], "b": ["reddish"], "c": []}.items():
            ids[name] = uuid7()
            session.add(
                Document(
                    id=ids[name],
                    tenant_id=tenant,
                    collection="c",
                    title=name,
                    body="",
                    tags=tags,
                    metadata_={},
                    version=1,
                    created_at=now,
                    updated_at=now,
                )
            )
    async with database.db() as session:
        found = await session.scalars(
            select(Document.id).where(
                Document.tenant_id == tenant, database.dialect.has_tag(Document.tags, "red")
            )
        )
        assert set(found) == {ids["a"]}


async def test_a_transaction_lock_has_one_holder_at_a_time(database: Db) -> None:
    d, key = database.dialect, secrets.randbelow(2**62)
    async with database.db.begin() as first:
        assert await d.try_transaction_lock(first, key)
        if d is POSTGRESQL:
            # SQLite needs no lock: its single writer keeps a second transaction from starting.
            async with database.db.begin() as second:
                assert not await d.try_transaction_lock(second, key)
    async with database.db.begin() as third:  # released with the first transaction
        assert await d.try_transaction_lock(third, key)


async def test_a_held_lock_has_one_holder_until_released(database: Db) -> None:
    d, key = database.dialect, secrets.randbelow(2**62)
    async with d.hold_lock(database.engine, key) as first:
        assert first
        async with d.hold_lock(database.engine, key) as second:
            assert not second
    async with d.hold_lock(database.engine, key) as again:
        assert again


async def test_listen_wakes_on_notify_or_returns_without_notifications(database: Db) -> None:
    d, channel = database.dialect, f"capstan_test_{secrets.token_hex(4)}"
    stopping, woken = asyncio.Event(), asyncio.Event()
    listener = asyncio.create_task(d.listen(database.engine, channel, woken.set, stopping))
    try:
        if d is SQLITE:
            await asyncio.wait_for(listener, 10)  # nothing to listen to: returns at once
            assert not woken.is_set()
            return
        await _until(woken.is_set)  # the listener wakes once when it (re)connects
        woken.clear()
        async with database.engine.connect() as conn:
            await conn.execute(text(f"NOTIFY {channel}"))
            await conn.commit()
        await _until(woken.is_set)
    finally:
        stopping.set()
        await asyncio.wait_for(listener, 10)


def _processed() -> dict[str, Any]:
    return {"subscriber": "dialect-test", "event_id": uuid7(), "processed_at": datetime.now(UTC)}


async def _until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
