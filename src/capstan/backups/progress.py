"""How long steps report progress: the CLI shows a Rich bar, the scheduler logs nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol


class BackupError(Exception):
    """A backup, verify or restore step failed; the message says which and why."""


class Reporter(Protocol):
    """`unit` is "bytes" for files being written, otherwise a noun for counted items."""

    def begin(self, description: str, total: int | None = None, unit: str = "") -> None: ...

    def update(self, completed: int) -> None: ...

    def end(self) -> None: ...


class Silent:
    def begin(self, description: str, total: int | None = None, unit: str = "") -> None:
        pass

    def update(self, completed: int) -> None:
        pass

    def end(self) -> None:
        pass


@contextlib.contextmanager
def step(
    reporter: Reporter, description: str, total: int | None = None, unit: str = ""
) -> Iterator[Reporter]:
    reporter.begin(description, total, unit)
    try:
        yield reporter
    finally:
        reporter.end()


@contextlib.asynccontextmanager
async def watch_file(reporter: Reporter, path: Path, every: float = 0.2) -> AsyncIterator[None]:
    """Report a growing file's size while the body runs (pg_dump, redis-cli --rdb)."""

    async def poll() -> None:
        while True:
            with contextlib.suppress(OSError):
                reporter.update(os.stat(path).st_size)
            await asyncio.sleep(every)

    task = asyncio.create_task(poll())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(OSError):
            reporter.update(os.stat(path).st_size)


async def run_tool(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run an external tool; BackupError with its stderr when it fails. Returns stdout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        raise BackupError(f"cannot run {argv[0]}: {exc}") from exc
    out, errout = await proc.communicate()
    if proc.returncode != 0:
        detail = errout.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        raise BackupError(f"{Path(argv[0]).name} failed (exit {proc.returncode}): {detail}")
    return out.decode(errors="replace")
