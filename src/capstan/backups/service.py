"""Create, verify, restore and prune backups (the CLI and the scheduler both call these)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import capstan
from capstan.backups import postgres, rabbitmq, sqlite
from capstan.backups import redis as redis_backup
from capstan.backups.manifest import (
    MANIFEST,
    TMP_PREFIX,
    Artifact,
    Backup,
    Manifest,
    backup_root,
    describe,
    find,
    list_backups,
    load,
    new_id,
    now_utc,
    remove_tree,
    sha256_file,
    write_verified,
)
from capstan.backups.progress import BackupError, Reporter, Silent, step
from capstan.cache.connect import primary_url
from capstan.db.dialect import dialect_for
from capstan.settings import Settings

PG_FILE = "postgres.dump"
SQLITE_FILE = "sqlite.db"
REDIS_KEYS_FILE = "redis-keys.jsonl.gz"
REDIS_RDB_FILE = "redis.rdb"
RABBIT_FILE = "rabbitmq-definitions.json"
# A crashed backup's temporary directory is removed by prune once it is this old.
STALE_TMP = timedelta(hours=12)


def _is_sqlite(settings: Settings) -> bool:
    # A file database is backed up by copying the file (backups/sqlite.py), a server by pg_dump.
    return dialect_for(settings.database_url).is_file


def _uses_redis(settings: Settings) -> bool:
    return settings.cache_url.startswith(
        ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def create(
    settings: Settings,
    reporter: Reporter | None = None,
    *,
    redis_rdb: redis_backup.RdbMethod = "auto",
    now: datetime | None = None,
) -> Backup:
    """Back up everything the settings point at into `<backup_dir>/<UTC timestamp>/`.

    Artifacts go into a dot directory first; the manifest is written last and the directory
    renamed into place, so a failure leaves nothing that looks like a complete backup.
    """
    reporter = reporter or Silent()
    root = backup_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    started = now or now_utc()
    clock = time.monotonic()
    backup_id = new_id(root, started)
    tmp = root / f"{TMP_PREFIX}{backup_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(mode=0o700)  # definitions hold password hashes
    notes: list[str] = []
    artifacts: list[Artifact] = []
    try:
        if _is_sqlite(settings):
            with step(reporter, "sqlite backup", 100, "%") as r:
                source = await asyncio.to_thread(
                    sqlite.dump,
                    settings.database_url,
                    tmp / SQLITE_FILE,
                    lambda _status, remaining, total: r.update(
                        int(100 * (total - remaining) / max(total, 1))
                    ),
                )
            artifacts.append(describe(tmp, "sqlite", SQLITE_FILE, source))
        else:
            source = await postgres.dump(settings.database_url, tmp / PG_FILE, reporter)
            artifacts.append(describe(tmp, "postgres", PG_FILE, source))
        if _uses_redis(settings):
            # With Sentinel, the primary of the moment (one server, as redis-cli needs).
            redis_url = await primary_url(settings.cache_url)
            source = await redis_backup.dump_keys(redis_url, tmp / REDIS_KEYS_FILE, reporter)
            artifacts.append(describe(tmp, "redis-keys", REDIS_KEYS_FILE, source))
            source = await redis_backup.dump_rdb(
                redis_url, tmp / REDIS_RDB_FILE, reporter, redis_rdb
            )
            if "skipped" in source:
                notes.append(f"redis RDB skipped: {source['skipped']}")
            else:
                artifacts.append(describe(tmp, "redis-rdb", REDIS_RDB_FILE, source))
        else:
            notes.append("cache is in process memory: nothing to back up")
        if settings.broker_management_url:
            source = await rabbitmq.export_definitions(
                settings.broker_management_url, tmp / RABBIT_FILE
            )
            artifacts.append(describe(tmp, "rabbitmq-definitions", RABBIT_FILE, source))
        elif not settings.broker_in_process:
            notes.append("CAPSTAN_BROKER_MANAGEMENT_URL is unset: RabbitMQ definitions skipped")
        manifest = Manifest(
            id=backup_id,
            created_at=started.isoformat(),
            completed_at=now_utc().isoformat(),
            duration_seconds=round(time.monotonic() - clock, 3),
            capstan_version=capstan.__version__,
            mode="embedded" if settings.embedded else "production",
            artifacts=artifacts,
            notes=notes,
        )
        for artifact in artifacts:
            with (tmp / artifact.path).open("rb") as f:
                os.fsync(f.fileno())
        (tmp / MANIFEST).write_text(manifest.to_json())
        _fsync_dir(tmp)
        final = root / backup_id
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        remove_tree(tmp)
        raise
    return Backup(final, manifest)


# ---------------------------------------------------------------- verify


@dataclass
class VerifyResult:
    backup: Backup
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_checksums(backup: Backup) -> list[str]:
    problems = []
    for a in backup.manifest.artifacts:
        path = backup.path / a.path
        if not path.is_file():
            problems.append(f"{a.name}: {a.path} is missing")
        elif path.stat().st_size != a.size:
            problems.append(f"{a.name}: size {path.stat().st_size}, manifest says {a.size}")
        elif sha256_file(path) != a.sha256:
            problems.append(f"{a.name}: sha256 mismatch (the file was changed or corrupted)")
    return problems


async def verify(
    settings: Settings, backup_id: str, reporter: Reporter | None = None
) -> VerifyResult:
    """Checksums, then a restore test of each artifact; the result is recorded beside it."""
    reporter = reporter or Silent()
    backup = find(backup_root(settings), backup_id)
    result = VerifyResult(backup)
    with step(reporter, "checksums"):
        result.problems += check_checksums(backup)
    result.checked.append("checksums")
    if result.ok:
        for a in backup.manifest.artifacts:
            path = backup.path / a.path
            with step(reporter, f"restore test: {a.name}"):
                result.problems += await _content_check(settings, backup, a, path)
            result.checked.append(a.name)
    write_verified(backup, result.ok, {"problems": result.problems, "checked": result.checked})
    return result


async def _content_check(settings: Settings, backup: Backup, a: Artifact, path: Path) -> list[str]:
    if a.name == "postgres":
        if _is_sqlite(settings):
            return ["postgres: no PostgreSQL configured to restore the dump into for checking"]
        return await postgres.verify(
            settings.database_url, path, backup.id, a.source.get("tables", {})
        )
    if a.name == "sqlite":
        problems = await asyncio.to_thread(sqlite.integrity, path)
        if problems:
            return problems
        found = await asyncio.to_thread(sqlite.table_stats, path)
        return postgres.compare(a.source.get("tables", {}), found)
    if a.name == "redis-keys":
        return redis_backup.check_keys_file(path)
    if a.name == "redis-rdb":
        return await redis_backup.check_rdb(path)
    if a.name == "rabbitmq-definitions":
        return rabbitmq.check_definitions(path)
    return [f"{a.name}: unknown artifact"]


# ---------------------------------------------------------------- restore


@dataclass
class RestoreResult:
    backup: Backup
    done: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


async def restore(
    settings: Settings,
    backup_id: str,
    reporter: Reporter | None = None,
    *,
    in_place: bool = False,
    with_cache: bool = False,
    parts: tuple[str, ...] = ("database", "redis", "rabbitmq"),
) -> RestoreResult:
    """Restore in order: database, Redis, RabbitMQ definitions. Writers must be stopped."""
    reporter = reporter or Silent()
    backup = find(backup_root(settings), backup_id)
    problems = check_checksums(backup)
    if problems:
        raise BackupError("refusing to restore a damaged backup: " + "; ".join(problems))
    result = RestoreResult(backup)
    m = backup.manifest
    if "database" in parts:
        if (a := m.artifact("postgres")) is not None:
            if _is_sqlite(settings):
                raise BackupError("the backup holds PostgreSQL but the settings point at SQLite")
            with step(reporter, "restore PostgreSQL"):
                expected = a.source.get("tables", {})
                if in_place:
                    mismatch = await postgres.restore_in_place(
                        settings.database_url, backup.path / a.path, expected
                    )
                    if mismatch:
                        raise BackupError("restored database differs: " + "; ".join(mismatch))
                else:
                    kept = await postgres.restore_swap(
                        settings.database_url, backup.path / a.path, backup.id, expected
                    )
                    result.details["previous_database"] = kept
            result.done.append("postgres")
        elif (a := m.artifact("sqlite")) is not None:
            if not _is_sqlite(settings):
                raise BackupError("the backup holds SQLite but the settings point at PostgreSQL")
            with step(reporter, "restore SQLite"):
                await asyncio.to_thread(sqlite.restore, settings.database_url, backup.path / a.path)
            result.done.append("sqlite")
    if "redis" in parts and (a := m.artifact("redis-keys")) is not None:
        if not _uses_redis(settings):
            raise BackupError("the backup holds Redis keys but CAPSTAN_CACHE_URL is not Redis")
        result.details["redis"] = await redis_backup.restore_keys(
            await primary_url(settings.cache_url),
            backup.path / a.path,
            reporter,
            with_cache=with_cache,
        )
        result.done.append("redis")
    if "rabbitmq" in parts and (a := m.artifact("rabbitmq-definitions")) is not None:
        if not settings.broker_management_url:
            raise BackupError("set CAPSTAN_BROKER_MANAGEMENT_URL to restore RabbitMQ definitions")
        with step(reporter, "restore RabbitMQ definitions"):
            await rabbitmq.import_definitions(settings.broker_management_url, backup.path / a.path)
        result.done.append("rabbitmq")
    return result


# ---------------------------------------------------------------- prune and status


@dataclass
class PruneResult:
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    stale_tmp_removed: list[str] = field(default_factory=list)


def prune(
    settings: Settings,
    keep_days: float | None = None,
    *,
    now: datetime | None = None,
    keep_min: int = 1,
) -> PruneResult:
    """Delete backups created more than `keep_days` ago, always keeping the newest `keep_min`."""
    days = settings.backup_retention_days if keep_days is None else keep_days
    now = now or now_utc()
    cutoff = now - timedelta(days=days)
    root = backup_root(settings)
    backups = list_backups(root)
    protected = {b.id for b in backups[-keep_min:]} if keep_min > 0 else set()
    result = PruneResult()
    for b in backups:
        if b.manifest.created < cutoff and b.id not in protected:
            remove_tree(b.path)
            result.removed.append(b.id)
        else:
            result.kept.append(b.id)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX) and p.is_dir():
                age = now.timestamp() - p.stat().st_mtime
                if age > STALE_TMP.total_seconds():
                    remove_tree(p)
                    result.stale_tmp_removed.append(p.name)
    return result


def last_success(settings: Settings) -> float | None:
    """Unix time the newest good backup finished (one that failed `verify` does not count)."""
    for backup in reversed(list_backups(backup_root(settings))):
        record = backup.verification()
        if record is None or record.get("ok"):
            return datetime.fromisoformat(backup.manifest.completed_at).timestamp()
    return None


__all__ = [
    "Backup",
    "BackupError",
    "PruneResult",
    "RestoreResult",
    "VerifyResult",
    "create",
    "find",
    "last_success",
    "list_backups",
    "load",
    "prune",
    "restore",
    "verify",
]
