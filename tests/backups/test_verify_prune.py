"""verify catches damage; prune keeps what is recent; the CLI drives all of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from capstan.backups import rabbitmq, service
from capstan.backups.manifest import (
    MANIFEST,
    TMP_PREFIX,
    Artifact,
    Manifest,
    backup_root,
    list_backups,
    sha256_file,
)
from capstan.backups.progress import BackupError
from capstan.settings import Settings
from tests.backups.conftest import ScratchDb, embedded, production, start, write_data
from tests.conftest import RedisProcess, service_url


async def _embedded_backup(tmp_path: Path) -> tuple[Settings, service.Backup]:
    settings = embedded(tmp_path)
    api = await start(settings)
    await write_data(api, documents=5)
    await api.container.close()
    return settings, await service.create(settings)


async def test_verify_detects_a_corrupted_artifact(tmp_path: Path) -> None:
    settings, backup = await _embedded_backup(tmp_path)
    assert (await service.verify(settings, backup.id)).ok
    path = backup.path / "sqlite.db"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit, same size
    path.write_bytes(bytes(data))

    result = await service.verify(settings, backup.id)
    assert not result.ok
    assert result.problems == ["sqlite: sha256 mismatch (the file was changed or corrupted)"]
    assert service.find(backup_root(settings), backup.id).verification()["ok"] is False  # type: ignore[index]
    with pytest.raises(BackupError, match="damaged"):
        await service.restore(settings, backup.id)
    # A backup that failed verify does not count as the last success.
    assert service.last_success(settings) is None


def _rewrite_manifest(backup: service.Backup, name: str) -> None:
    """Make the manifest agree with a damaged file, so only the restore test can notice."""
    raw = json.loads((backup.path / MANIFEST).read_text())
    for a in raw["artifacts"]:
        if a["name"] == name:
            a["size"] = (backup.path / a["path"]).stat().st_size
            a["sha256"] = sha256_file(backup.path / a["path"])
    (backup.path / MANIFEST).write_text(json.dumps(raw))


@pytest.mark.postgres
@pytest.mark.redis
async def test_verify_restores_into_a_scratch_database_and_catches_a_truncated_dump(
    scratch_db: ScratchDb, redis_process: RedisProcess, tmp_path: Path
) -> None:
    settings = production(scratch_db.url, redis_process.url, tmp_path)
    api = await start(settings)
    await write_data(api, documents=40)
    await api.container.close()
    backup = await service.create(settings, redis_rdb="bgsave")
    result = await service.verify(settings, backup.id)
    assert result.ok, result.problems
    assert result.checked == ["checksums", "postgres", "redis-keys", "redis-rdb"]

    dump = backup.path / "postgres.dump"
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size * 2 // 3])
    expected_size = backup.manifest.artifact("postgres").size  # type: ignore[union-attr]
    assert (await service.verify(settings, backup.id)).problems == [
        f"postgres: size {dump.stat().st_size}, manifest says {expected_size}"
    ]
    _rewrite_manifest(backup, "postgres")
    result = await service.verify(settings, backup.id)
    assert not result.ok
    assert "pg_restore" in result.problems[0], result.problems
    # The scratch database is gone after verify, failed or not.
    from capstan.backups.postgres import conn_from_url

    conn = await conn_from_url(scratch_db.url).connect()
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'capstan_verify_%' "
            "AND datname LIKE $1",
            f"%{backup.id.lower()}%",
        )
    finally:
        await conn.close()
    assert left == 0


@pytest.mark.postgres
async def test_verify_compares_row_counts_and_checksums_with_the_manifest(
    scratch_db: ScratchDb, tmp_path: Path
) -> None:
    settings = production(scratch_db.url, "memory://", tmp_path)
    api = await start(settings)
    await write_data(api, documents=6)
    await api.container.close()
    backup = await service.create(settings)
    raw = json.loads((backup.path / MANIFEST).read_text())
    tables = raw["artifacts"][0]["source"]["tables"]
    tables["public.documents"]["rows"] += 1
    tables["public.tenants"]["checksum"] = "1"
    (backup.path / MANIFEST).write_text(json.dumps(raw))
    result = await service.verify(settings, backup.id)
    assert result.problems == [
        "public.documents: 6 rows, the backup has 7",
        "public.tenants: content checksum differs",
    ]


def _fake_backup(root: Path, backup_id: str, created: datetime) -> None:
    path = root / backup_id
    path.mkdir(parents=True)
    (path / "x.bin").write_bytes(b"x")
    manifest = Manifest(
        id=backup_id,
        created_at=created.isoformat(),
        completed_at=(created + timedelta(seconds=5)).isoformat(),
        duration_seconds=5.0,
        capstan_version="test",
        mode="embedded",
        artifacts=[Artifact("sqlite", "x.bin", 1, sha256_file(path / "x.bin"))],
    )
    (path / MANIFEST).write_text(manifest.to_json())


def test_prune_removes_old_backups_and_keeps_recent_ones(tmp_path: Path) -> None:
    settings = embedded(tmp_path)
    root = backup_root(settings)
    now = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
    for days in (30, 8, 7.5, 6.9, 1, 0):
        created = now - timedelta(days=days)
        _fake_backup(root, created.strftime("%Y%m%dT%H%M%SZ"), created)
    stale = root / f"{TMP_PREFIX}crashed"
    fresh = root / f"{TMP_PREFIX}running"
    stale.mkdir()
    fresh.mkdir()
    old = (now - timedelta(days=2)).timestamp()
    os.utime(stale, (old, old))
    os.utime(fresh, (now.timestamp(), now.timestamp()))
    (root / "not-a-backup").mkdir()  # no manifest: never touched

    result = service.prune(settings, now=now)  # default: backup_retention_days = 7
    assert len(result.removed) == 3 and len(result.kept) == 3
    kept_created = [b.manifest.created for b in list_backups(root)]
    assert kept_created == [now - timedelta(days=d) for d in (6.9, 1, 0)]
    assert result.stale_tmp_removed == [stale.name]
    assert fresh.exists() and (root / "not-a-backup").exists()

    # The newest backup survives any retention, so there is always one to restore.
    result = service.prune(settings, keep_days=0.5, now=now + timedelta(days=30))
    assert [b.manifest.created for b in list_backups(root)] == [now]
    assert len(result.removed) == 2


def test_last_success_comes_from_the_newest_good_backup(tmp_path: Path) -> None:
    settings = embedded(tmp_path)
    root = backup_root(settings)
    assert service.last_success(settings) is None
    t0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    _fake_backup(root, "a", t0)
    _fake_backup(root, "b", t0 + timedelta(days=1))
    (root / "b" / "verified.json").write_text(json.dumps({"ok": False, "verified_at": "x"}))
    assert service.last_success(settings) == (t0 + timedelta(seconds=5)).timestamp()


@pytest.mark.rabbitmq
async def test_rabbitmq_definitions_export_and_import(tmp_path: Path) -> None:
    from urllib.parse import urlparse

    amqp = urlparse(service_url("rabbitmq"))
    management = f"http://{amqp.username}:{amqp.password}@{amqp.hostname}:15672"
    out = tmp_path / "definitions.json"
    source = await rabbitmq.export_definitions(management, out)
    assert source["vhosts"] >= 1 and source["users"] >= 1
    assert rabbitmq.check_definitions(out) == []

    queue = f"capstan-backup-test-{os.getpid()}"
    small = tmp_path / "small.json"
    small.write_text(
        json.dumps(
            {
                "queues": [
                    {
                        "name": queue,
                        "vhost": "/",
                        "durable": True,
                        "auto_delete": False,
                        "arguments": {},
                    }
                ]
            }
        )
    )
    await rabbitmq.import_definitions(management, small)
    async with httpx.AsyncClient(
        base_url=f"http://{amqp.hostname}:15672", auth=(amqp.username or "", amqp.password or "")
    ) as client:
        try:
            assert (await client.get(f"/api/queues/%2F/{queue}")).status_code == 200
        finally:
            await client.delete(f"/api/queues/%2F/{queue}")


def _cli(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env["CAPSTAN_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "capstan.cli.main", "backup", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_create_list_verify_restore_prune(tmp_path: Path) -> None:
    settings = embedded(tmp_path)
    api = await start(settings)
    await write_data(api, documents=3)
    await api.container.close()
    data = settings.data_dir

    created = _cli(["create"], data)
    assert created.returncode == 0, created.stderr
    backup_id = created.stdout.strip()
    listed = _cli(["list", "--json"], data)
    assert json.loads(listed.stdout)[0]["id"] == backup_id
    verified = _cli(["verify", backup_id], data)
    assert verified.returncode == 0 and "verified" in verified.stderr, verified.stderr
    table = _cli(["list"], data)
    assert backup_id in table.stdout and "ok" in table.stdout
    refused = _cli(["restore", backup_id], data)  # no --yes, no terminal: aborts
    assert refused.returncode != 0
    restored = _cli(["restore", backup_id, "--yes"], data)
    assert restored.returncode == 0 and "restored sqlite" in restored.stderr, restored.stderr
    pruned = _cli(["prune", "--keep-days", "7"], data)
    assert pruned.returncode == 0 and "0 removed, 1 kept" in pruned.stderr
    missing = _cli(["verify", "20000101T000000Z"], data)
    assert missing.returncode == 1 and "no complete backup" in missing.stderr
