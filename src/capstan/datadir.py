"""Where embedded data lives when CAPSTAN_DATA_DIR is unset: one answer from any directory.

The nearest `.capstan` in the working directory or a parent (as git finds `.git`), so every
command run inside a project uses the database its `capstan dev` made; outside any project, the
data dir the last `capstan dev` on this account used (recorded under XDG_STATE_HOME); failing
both, a new `./.capstan`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

NAME = ".capstan"

How = Literal["found", "last-dev", "new"]


def state_file() -> Path:
    """The per-user record of the last `capstan dev` data dir."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "capstan" / "dev-data-dir"


def locate(start: Path | None = None) -> tuple[Path, How]:
    """The data dir to use from `start` (default: the working directory), and how it was found."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / NAME).is_dir():
            return folder / NAME, "found"
    try:
        recorded = Path(state_file().read_text().strip())
    except OSError:
        recorded = None
    if recorded is not None and recorded.is_absolute() and recorded.is_dir():
        return recorded, "last-dev"
    return here / NAME, "new"


def default_data_dir() -> Path:
    return locate()[0]


def remember(data_dir: Path) -> None:
    """Record `data_dir` as the last `capstan dev`'s, for commands run outside any project."""
    try:
        record = state_file()
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(f"{data_dir.resolve()}\n")
    except OSError:  # a read-only home: commands still find the data dir by walking up
        pass
