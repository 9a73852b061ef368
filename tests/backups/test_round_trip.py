"""Backup → wipe → restore gives back identical data: PostgreSQL + Redis, and embedded SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from capstan.backups import service
from capstan.backups import sqlite as sqlite_backup
from capstan.backups.manifest import MANIFEST, backup_root, list_backups
from capstan.backups.progress import BackupError
from capstan.backups.redis import CACHE_KEY
from tests.backups.conftest import (
    ScratchDb,
    assert_same_redis,
    embedded,
    pg_stats,
    production,
    redis_snapshot,
    start,
    wipe_postgres,
    write_data,
)
from tests.conftest import RedisProcess, free_port


async def _extra_redis_keys(url: str) -> None:
    """Every data type, with and without TTLs, and a binary key."""
    client = aioredis.from_url(url)
    try:
        await client.set("plain", "value")
        await client.set("expiring", "soon", ex=3600)
        await client.hset("hash", mapping={"a": "1", "b": "2"})
        await client.rpush("list", "x", "y", "z")
        await client.sadd("set", "m1", "m2")
        await client.zadd("zset", {"one": 1.0, "two": 2.5})
        await client.xadd("stream", {"field": "v"})
        await client.set(b"bin\x00\xffkey", b"\x00\x01\x02")
        await client.expire("hash", 7200)
    finally:
        await client.aclose()


@pytest.mark.postgres
@pytest.mark.redis
async def test_postgres_and_redis_round_trip_restores_identical_data(
    scratch_db: ScratchDb, redis_process: RedisProcess, tmp_path: Path
) -> None:
    settings = production(scratch_db.url, redis_process.url, tmp_path)
    api = await start(settings)
    written = await write_data(api)
    await api.container.close()
    await _extra_redis_keys(redis_process.url)
    pg_before = await pg_stats(scratch_db.url)
    redis_before = await redis_snapshot(redis_process.url)
    assert pg_before["public.documents"]["rows"] == 25  # 24 + another tenant's
    assert any(CACHE_KEY.match(k) for k in redis_before)

    backup = await service.create(settings, redis_rdb="bgsave")
    names = {a.name for a in backup.manifest.artifacts}
    assert names == {"postgres", "redis-keys", "redis-rdb"}
    assert backup.manifest.artifact("postgres").source["tables"] == pg_before  # type: ignore[union-attr]
    assert backup.manifest.artifact("redis-keys").source["keys"] == len(redis_before)  # type: ignore[union-attr]
    assert (await service.verify(settings, backup.id)).ok

    await wipe_postgres(scratch_db.url)
    client = aioredis.from_url(redis_process.url)
    await client.flushdb()
    await client.aclose()
    assert await redis_snapshot(redis_process.url) == {}

    result = await service.restore(settings, backup.id, with_cache=True)
    assert result.done == ["postgres", "redis"]
    assert result.details["previous_database"].startswith(scratch_db.name)
    assert await pg_stats(scratch_db.url) == pg_before
    assert_same_redis(redis_before, await redis_snapshot(redis_process.url))

    # The restored installation serves the old key and documents.
    api = await start(settings)
    try:
        async with api.client(written.key) as c:
            for doc_id in written.doc_ids[:3]:
                r = await c.get(f"/v1/documents/{doc_id}", headers={"Cache-Control": "no-cache"})
                assert r.status_code == 200, r.text
    finally:
        await api.container.close()


@pytest.mark.postgres
@pytest.mark.redis
async def test_in_place_restore_and_default_drops_document_cache_entries(
    scratch_db: ScratchDb, redis_process: RedisProcess, tmp_path: Path
) -> None:
    settings = production(scratch_db.url, redis_process.url, tmp_path)
    api = await start(settings)
    await write_data(api, documents=8)
    await api.container.close()
    pg_before = await pg_stats(scratch_db.url)
    redis_before = await redis_snapshot(redis_process.url)
    backup = await service.create(settings, redis_rdb="none")
    assert backup.manifest.notes == ["redis RDB skipped: disabled"]

    # Rows deleted and changed after the backup; a key written after it.
    conn_api = await start(settings)
    await write_data(conn_api, documents=3)
    await conn_api.container.close()
    assert await pg_stats(scratch_db.url) != pg_before

    result = await service.restore(settings, backup.id, in_place=True)
    assert "previous_database" not in result.details
    assert await pg_stats(scratch_db.url) == pg_before
    expected = {k: v for k, v in redis_before.items() if not CACHE_KEY.match(k)}
    assert len(expected) < len(redis_before)
    assert result.details["redis"]["skipped_cache"] == len(redis_before) - len(expected)
    assert_same_redis(expected, await redis_snapshot(redis_process.url))


@pytest.mark.redis
async def test_rdb_is_fetched_with_redis_cli_and_passes_redis_check_rdb(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    from capstan.backups.progress import Silent
    from capstan.backups.redis import check_rdb, dump_rdb

    await _extra_redis_keys(redis_process.url)
    # No diskless-sync delay: the private server answers redis-cli --rdb at once.
    client = aioredis.from_url(redis_process.url)
    await client.config_set("repl-diskless-sync-delay", 0)
    await client.aclose()
    out = tmp_path / "redis.rdb"
    source = await dump_rdb(redis_process.url, out, Silent(), "redis-cli")
    assert source == {"method": "redis-cli --rdb"}
    assert out.read_bytes().startswith(b"REDIS")
    assert await check_rdb(out) == []
    out.write_bytes(out.read_bytes()[:-20])
    assert await check_rdb(out) != []


async def test_embedded_sqlite_round_trip(tmp_path: Path) -> None:
    settings = embedded(tmp_path)
    api = await start(settings)
    written = await write_data(api)
    await api.container.close()
    db = sqlite_backup.database_path(settings.database_url)
    before = sqlite_backup.table_stats(db)
    assert before["documents"]["rows"] == 25

    backup = await service.create(settings)
    assert [a.name for a in backup.manifest.artifacts] == ["sqlite"]
    assert backup.manifest.mode == "embedded"
    assert backup.manifest.artifact("sqlite").source["tables"] == before  # type: ignore[union-attr]

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("DELETE FROM documents")
    conn.execute("DELETE FROM tenants")
    conn.commit()
    conn.close()
    assert sqlite_backup.table_stats(db)["documents"]["rows"] == 0

    result = await service.restore(settings, backup.id)
    assert result.done == ["sqlite"]
    assert sqlite_backup.table_stats(db) == before
    api = await start(settings)
    try:
        async with api.client(written.key) as c:
            r = await c.get(f"/v1/documents/{written.doc_ids[0]}")
            assert r.status_code == 200, r.text
    finally:
        await api.container.close()


async def test_a_failed_backup_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    settings = embedded(tmp_path).model_copy(
        update={"cache_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    api = await start(settings.model_copy(update={"cache_url": "memory://"}))
    await api.container.close()
    with pytest.raises(BackupError):
        await service.create(settings)
    root = backup_root(settings)
    assert list_backups(root) == []
    assert [p.name for p in root.iterdir()] == []


async def test_manifest_lists_each_artifact_with_size_and_checksum(tmp_path: Path) -> None:
    settings = embedded(tmp_path)
    api = await start(settings)
    await api.container.close()
    backup = await service.create(settings)
    raw = json.loads((backup.path / MANIFEST).read_text())
    assert raw["format"] == 1 and raw["id"] == backup.id
    assert raw["capstan_version"]
    (artifact,) = raw["artifacts"]
    assert artifact["path"] == "sqlite.db"
    assert artifact["size"] == (backup.path / "sqlite.db").stat().st_size
    assert len(artifact["sha256"]) == 64
    assert artifact["source"]["tables"]["tenants"]["rows"] == 0


@pytest.mark.redis
async def test_bgsave_twice_in_one_second_does_not_wait_for_a_lastsave_change(
    redis_process: RedisProcess, tmp_path: Path
) -> None:
    """LASTSAVE has one-second resolution: the second save must still be noticed."""
    import asyncio

    from capstan.backups.progress import Silent
    from capstan.backups.redis import dump_rdb

    await _extra_redis_keys(redis_process.url)
    for name in ("a.rdb", "b.rdb", "c.rdb"):
        source = await asyncio.wait_for(
            dump_rdb(redis_process.url, tmp_path / name, Silent(), "bgsave"), timeout=10
        )
        assert source["method"] == "BGSAVE + copy"
        assert (tmp_path / name).read_bytes().startswith(b"REDIS")
