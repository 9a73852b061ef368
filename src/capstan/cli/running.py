"""How other commands find the `capstan dev` running on a data dir.

`capstan dev` holds an exclusive lock on `<data dir>/server.lock` for its whole life and writes
its URL to `<data dir>/server.json`. The lock, not the file, says whether it is running: the
kernel releases it when the process exits however it exits, so a stale file never misleads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import IO

LOCK = "server.lock"
INFO = "server.json"


class AlreadyRunning(Exception):
    """Another `capstan dev` holds the data dir."""


class DevServerLock:
    """Held by `capstan dev` while it serves; `release()` (or exit) frees the data dir."""

    def __init__(self, data_dir: Path, url: str) -> None:
        self._data_dir = data_dir
        self._file: IO[str] | None = open(data_dir / LOCK, "a+")  # noqa: SIM115 (held for life)
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise AlreadyRunning(running_server(data_dir) or "another process") from None
        (data_dir / INFO).write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n")

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                (self._data_dir / INFO).unlink()
            self._file.close()
            self._file = None


def running_server(data_dir: Path) -> str | None:
    """The URL of the `capstan dev` serving `data_dir`, or None when none runs."""
    lock = data_dir / LOCK
    if not lock.exists():
        return None
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a server runs
        else:
            return None
    try:
        return str(json.loads((data_dir / INFO).read_text())["url"])
    except (OSError, ValueError, KeyError):
        return "(starting)"
