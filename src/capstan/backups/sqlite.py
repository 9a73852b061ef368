"""Embedded mode: SQLite's online backup API (consistent while the database is in use, WAL
included), table statistics computed on the copy, and restore through the same API."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from capstan.backups.postgres import TableStats
from capstan.backups.progress import BackupError
from capstan.db.dialect import dialect_for

PAGES_PER_STEP = 4096


def _is_file_url(url: str) -> bool:
    try:
        return dialect_for(url).is_file
    except ValueError:
        return False


def database_path(url: str) -> Path:
    parsed = make_url(url)
    if not _is_file_url(url) or not parsed.database:
        raise BackupError(f"not a SQLite file URL: {url}")
    return Path(parsed.database)


def _copy(source: sqlite3.Connection, dest: sqlite3.Connection, progress: Any = None) -> None:
    source.backup(dest, pages=PAGES_PER_STEP, progress=progress)


def table_stats(db: Path) -> TableStats:
    """Rows and an order-independent checksum per table (sum of 60-bit row hashes)."""
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            )
        ]
        stats: TableStats = {}
        for name in names:
            rows, total = 0, 0
            quoted = '"' + name.replace('"', '""') + '"'
            for row in conn.execute(f"SELECT * FROM {quoted}"):
                digest = hashlib.md5(repr(row).encode(), usedforsecurity=False).hexdigest()
                total += int(digest[:15], 16)
                rows += 1
            stats[name] = {"rows": rows, "checksum": str(total)}
        return stats
    finally:
        conn.close()


def integrity(db: Path) -> list[str]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [f"sqlite: {exc}"]
    return [] if result == ["ok"] else [f"sqlite integrity_check: {'; '.join(result[:5])}"]


def dump(url: str, out: Path, progress: Any = None) -> dict[str, Any]:
    db = database_path(url)
    if not db.exists():
        raise BackupError(f"SQLite database {db} does not exist")
    source = sqlite3.connect(str(db), timeout=30)
    dest = sqlite3.connect(str(out))
    try:
        _copy(source, dest, progress)
        # A self-contained file: no -wal/-shm needed to open it read-only later.
        dest.execute("PRAGMA journal_mode=DELETE")
    finally:
        dest.close()
        source.close()
    return {
        "database": str(db.resolve()),
        "sqlite_version": sqlite3.sqlite_version,
        "tables": table_stats(out),
    }


def restore(url: str, backup_file: Path) -> None:
    """Overwrite the live database with the backup, page by page, under SQLite's locks."""
    db = database_path(url)
    db.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
    dest = sqlite3.connect(str(db), timeout=30)
    try:
        _copy(source, dest)
    finally:
        dest.close()
        source.close()
