"""The backup layout on disk: `<backup_dir>/<id>/manifest.json` plus one file per artifact.

A backup is complete exactly when its directory has a non-dot name and holds `manifest.json`:
backups are written into `.tmp-<id>-<random>/` and renamed into place after the manifest, so
a crash leaves only a dot directory that `list` ignores and `prune` removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from capstan.settings import Settings

FORMAT = 1
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
TMP_PREFIX = ".tmp-"
ID_FORMAT = "%Y%m%dT%H%M%SZ"


def backup_root(settings: Settings) -> Path:
    """CAPSTAN_BACKUP_DIR, or `<data_dir>/backups` when it is unset or empty."""
    configured = settings.backup_dir
    if configured is None or configured == Path():  # an empty variable parses as "."
        return settings.data_dir / "backups"
    return configured


@dataclass
class Artifact:
    """One file of a backup: what it holds, where, and its checksum."""

    name: str  # postgres | sqlite | redis-rdb | redis-keys | rabbitmq-definitions
    path: str  # relative to the backup directory
    size: int
    sha256: str
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    id: str
    created_at: str  # ISO 8601, UTC
    completed_at: str
    duration_seconds: float
    capstan_version: str
    mode: str  # embedded | production
    artifacts: list[Artifact]
    format: int = FORMAT
    notes: list[str] = field(default_factory=list)

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)

    def artifact(self, name: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.name == name), None)

    @property
    def size(self) -> int:
        return sum(a.size for a in self.artifacts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise ValueError(f"unsupported manifest format {raw.get('format')!r}")
        raw["artifacts"] = [Artifact(**a) for a in raw["artifacts"]]
        return cls(**raw)


@dataclass
class Backup:
    """A complete backup found on disk."""

    path: Path
    manifest: Manifest

    @property
    def id(self) -> str:
        return self.manifest.id

    def verification(self) -> dict[str, Any] | None:
        """The last `verify` result recorded beside the backup, if any."""
        try:
            data = json.loads((self.path / VERIFIED).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_id(root: Path, when: datetime) -> str:
    """A UTC timestamp id, suffixed when a backup of the same second exists."""
    base = when.astimezone(UTC).strftime(ID_FORMAT)
    candidate, n = base, 1
    while (root / candidate).exists():
        candidate = f"{base}-{n}"
        n += 1
    return candidate


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe(directory: Path, name: str, filename: str, source: dict[str, Any]) -> Artifact:
    """Size and checksum of a finished artifact file."""
    path = directory / filename
    return Artifact(name, filename, path.stat().st_size, sha256_file(path), source)


def load(path: Path) -> Backup | None:
    """The backup in `path`, or None when it is incomplete or not a backup."""
    if path.name.startswith(".") or not path.is_dir():
        return None
    try:
        return Backup(path, Manifest.from_json((path / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def list_backups(root: Path) -> list[Backup]:
    """Complete backups, oldest first."""
    if not root.is_dir():
        return []
    found = [b for p in root.iterdir() if (b := load(p)) is not None]
    return sorted(found, key=lambda b: (b.manifest.created, b.id))


def find(root: Path, backup_id: str) -> Backup:
    """The backup with this id (`latest` is the newest); LookupError when there is none."""
    backups = list_backups(root)
    if backup_id == "latest":
        if not backups:
            raise LookupError(f"no backups in {root}")
        return backups[-1]
    for b in backups:
        if b.id == backup_id:
            return b
    raise LookupError(f"no complete backup {backup_id!r} in {root}")


def write_verified(backup: Backup, ok: bool, details: dict[str, Any]) -> None:
    record = {"ok": ok, "verified_at": now_utc().isoformat(), **details}
    tmp = backup.path / (VERIFIED + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, backup.path / VERIFIED)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
