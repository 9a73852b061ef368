"""Fixtures for backups: a scratch PostgreSQL database per test, data written through the API,
and snapshots of what a restore must reproduce."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

from capstan.backups.postgres import TableStats, conn_from_url, stats_of
from capstan.db.migrate import upgrade
from capstan.settings import Settings
from tests.conftest import UNLIMITED, Api, _admin_sql, service_url, start_api


@dataclass
class ScratchDb:
    url: str
    name: str
    admin_url: str


@pytest.fixture
async def scratch_db() -> AsyncIterator[ScratchDb]:
    """A migrated database of this test only; dropped with anything a restore left beside it."""
    base = service_url("postgres")
    name = f"capstan_bk_{uuid.uuid4().hex[:10]}"
    await _admin_sql(base, f'CREATE DATABASE "{name}"')
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    await upgrade(url)
    yield ScratchDb(url, name, base)
    conn = await conn_from_url(base).connect()
    try:
        leftovers = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", f"{name}%"
        )
    finally:
        await conn.close()
    for row in leftovers:
        await _admin_sql(base, f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')


def production(db_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        cache_url=redis_url,
        backup_dir=tmp_path / "backups",
        **UNLIMITED,  # type: ignore[arg-type]
    )


def embedded(tmp_path: Path) -> Settings:
    settings = Settings(
        data_dir=tmp_path / "data",
        backup_dir=tmp_path / "backups",
        **UNLIMITED,  # type: ignore[arg-type]
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


@dataclass
class Written:
    key: str
    doc_ids: list[str]


async def write_data(api: Api, documents: int = 25) -> Written:
    """Tenants, documents (some updated, one deleted), cached reads and a session: real writes."""
    tenant = await api.tenant()
    other = await api.tenant()
    ids = []
    async with api.client(tenant.key) as client:
        for i in range(documents):
            r = await client.post(
                "/v1/documents",
                json={
                    "title": f"doc {i}",
                    "body": f"body {i} ünïcode ✓",
                    "tags": [f"t{i % 3}"],
                    "metadata": {"n": i, "f": i / 7},
                },
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        for doc_id in ids[:-1][:5]:
            r = await client.patch(f"/v1/documents/{doc_id}", json={"title": "changed"})
            assert r.status_code == 200, r.text
        assert (await client.delete(f"/v1/documents/{ids[-1]}")).status_code == 204
        for doc_id in ids[:-1][:10]:  # fills the document cache
            assert (await client.get(f"/v1/documents/{doc_id}")).status_code == 200
        assert (await client.post("/v1/sessions")).status_code in (200, 201)
    async with api.client(other.key) as client:
        r = await client.post("/v1/documents", json={"body": "another tenant"})
        assert r.status_code == 201
    return Written(tenant.key, ids[:-1])


async def pg_stats(url: str) -> TableStats:
    return await stats_of(conn_from_url(url))


async def _value(client: aioredis.Redis, key: bytes) -> object:
    kind = (await client.type(key)).decode()
    if kind == "string":
        return await client.get(key)
    if kind == "hash":
        return await client.hgetall(key)
    if kind == "list":
        return await client.lrange(key, 0, -1)
    if kind == "set":
        return sorted(await client.smembers(key))
    if kind == "zset":
        return await client.zrange(key, 0, -1, withscores=True)
    if kind == "stream":
        return await client.xrange(key)
    raise AssertionError(f"unexpected type {kind} of {key!r}")


async def redis_snapshot(url: str) -> dict[bytes, tuple[object, int]]:
    """Every key's type-aware value and PTTL (DUMP payloads of sets may differ in order)."""
    client = aioredis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(count=500)]
        return {key: (await _value(client, key), int(await client.pttl(key))) for key in keys}
    finally:
        await client.aclose()


def assert_same_redis(
    before: dict[bytes, tuple[object, int]], after: dict[bytes, tuple[object, int]]
) -> None:
    assert sorted(after) == sorted(before)
    for key, (value, ttl) in before.items():
        got_value, got_ttl = after[key]
        assert got_value == value, key
        if ttl < 0:
            assert got_ttl == ttl, key
        else:  # restored with the TTL it had at backup time: equal up to the test's duration
            assert 0 < got_ttl <= ttl and ttl - got_ttl < 60_000, (key, ttl, got_ttl)


async def wipe_postgres(url: str) -> None:
    conn = await conn_from_url(url).connect()
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema')"
        )
        assert tables == 0
    finally:
        await conn.close()


async def start(settings: Settings) -> Api:
    return await start_api(settings)
