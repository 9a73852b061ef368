"""`capstan backup create | list | verify | restore | prune` (docs/backups.md)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from capstan.backups import service
from capstan.backups.manifest import backup_root
from capstan.backups.progress import BackupError
from capstan.settings import Settings

app = typer.Typer(
    help="Back up, verify, restore and prune (docs/backups.md).", no_args_is_help=True
)
err = Console(stderr=True)


class RichReporter:
    """Each step a line with a spinner or bar; sizes in bytes for dumps, counts for keys."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._unit = ""
        self._total: int | None = None

    def begin(self, description: str, total: int | None = None, unit: str = "") -> None:
        self._unit = unit
        self._total = total
        self._task = self._progress.add_task(description, total=total, amount="")

    def update(self, completed: int) -> None:
        if self._task is not None:
            if self._unit == "bytes":
                amount = _size(completed)
            elif self._total is not None:
                amount = f"{completed}/{self._total} {self._unit}"
            else:
                amount = f"{completed} {self._unit}"
            self._progress.update(self._task, completed=completed, amount=amount)

    def end(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[self._task]
            self._progress.update(
                self._task, total=task.completed or 1, completed=task.completed or 1
            )
            self._task = None


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[amount]}"),
        TimeElapsedColumn(),
        console=err,
    )


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]{exc}[/red]")
    return typer.Exit(1)


@app.command("create")
def create(
    rdb: Annotated[
        str, typer.Option(help="Redis RDB: auto (redis-cli --rdb, else BGSAVE+copy), none.")
    ] = "auto",
) -> None:
    """Back up the database, Redis and RabbitMQ definitions into a new backup directory."""
    if rdb not in ("auto", "redis-cli", "bgsave", "none"):
        raise typer.BadParameter("--rdb is auto, redis-cli, bgsave or none")
    settings = Settings()
    try:
        with _progress() as bar:
            backup = asyncio.run(
                service.create(settings, RichReporter(bar), redis_rdb=rdb)  # type: ignore[arg-type]
            )
    except (BackupError, OSError) as exc:
        raise _fail(exc) from exc
    for note in backup.manifest.notes:
        err.print(f"[yellow]note:[/yellow] {note}")
    err.print(
        f"[green]backup {backup.id}[/green] ({_size(backup.manifest.size)}, "
        f"{backup.manifest.duration_seconds:.1f}s) in {backup.path}"
    )
    typer.echo(backup.id)


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Complete backups, newest first."""
    settings = Settings()
    backups = list(reversed(service.list_backups(backup_root(settings))))
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": b.id,
                        "created_at": b.manifest.created_at,
                        "size": b.manifest.size,
                        "artifacts": [a.name for a in b.manifest.artifacts],
                        "verified": (b.verification() or {}).get("ok"),
                    }
                    for b in backups
                ]
            )
        )
        return
    table = Table("id", "created (UTC)", "mode", "size", "artifacts", "verified")
    table.columns[0].no_wrap = True
    for b in backups:
        record = b.verification()
        verified = (
            "—"
            if record is None
            else ("[green]ok[/green]" if record.get("ok") else "[red]FAILED[/red]")
        )
        table.add_row(
            b.id,
            datetime.fromisoformat(b.manifest.created_at).strftime("%Y-%m-%d %H:%M:%S"),
            b.manifest.mode,
            _size(b.manifest.size),
            ", ".join(a.name for a in b.manifest.artifacts),
            verified,
        )
    Console().print(table)
    err.print(f"{len(backups)} backup(s) in {backup_root(settings)}")


@app.command("verify")
def verify(
    backup_id: Annotated[
        str, typer.Argument(help="A backup id from `list`, or latest.")
    ] = "latest",
) -> None:
    """Check checksums, restore into a scratch database and compare with the manifest."""
    settings = Settings()
    try:
        with _progress() as bar:
            result = asyncio.run(service.verify(settings, backup_id, RichReporter(bar)))
    except (BackupError, LookupError, OSError) as exc:
        raise _fail(exc) from exc
    if result.ok:
        err.print(f"[green]backup {result.backup.id} verified[/green]: {', '.join(result.checked)}")
        return
    for problem in result.problems:
        err.print(f"[red]✗[/red] {problem}")
    raise typer.Exit(1)


@app.command("restore")
def restore(
    backup_id: Annotated[str, typer.Argument(help="A backup id from `list`, or latest.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    in_place: Annotated[
        bool,
        typer.Option(
            help="PostgreSQL: pg_restore --clean into the live database instead of restoring "
            "into a fresh database and swapping it in (needs no CREATEDB)."
        ),
    ] = False,
    with_cache: Annotated[
        bool, typer.Option(help="Also restore document cache entries (off: they refill).")
    ] = False,
    only: Annotated[
        list[str] | None, typer.Option(help="Restore only these parts: database, redis, rabbitmq.")
    ] = None,
) -> None:
    """Restore a backup: database, then Redis, then RabbitMQ definitions. Stop writers first."""
    settings = Settings()
    parts = tuple(only or ("database", "redis", "rabbitmq"))
    if set(parts) - {"database", "redis", "rabbitmq"}:
        raise typer.BadParameter("--only takes database, redis or rabbitmq")
    try:
        backup = service.find(backup_root(settings), backup_id)
    except LookupError as exc:
        raise _fail(exc) from exc
    if not yes:
        typer.confirm(
            f"Replace {', '.join(parts)} with backup {backup.id} ({backup.manifest.created_at})? "
            "Every API, worker, relay, subscriber and scheduler must be stopped",
            abort=True,
        )
    try:
        with _progress() as bar:
            result = asyncio.run(
                service.restore(
                    settings,
                    backup.id,
                    RichReporter(bar),
                    in_place=in_place,
                    with_cache=with_cache,
                    parts=parts,
                )
            )
    except (BackupError, OSError) as exc:
        raise _fail(exc) from exc
    err.print(f"[green]restored {', '.join(result.done) or 'nothing'}[/green] from {backup.id}")
    if kept := result.details.get("previous_database"):
        err.print(
            f"the database as it was before is kept as [bold]{kept}[/bold] (connections "
            f'disallowed); drop it when satisfied: DROP DATABASE "{kept}"'
        )


@app.command("prune")
def prune(
    keep_days: Annotated[
        float | None,
        typer.Option(
            help="Delete backups older than this (default CAPSTAN_BACKUP_RETENTION_DAYS)."
        ),
    ] = None,
) -> None:
    """Delete old backups (the newest one is always kept) and leftovers of crashed runs."""
    result = service.prune(Settings(), keep_days)
    for backup_id in result.removed:
        err.print(f"removed {backup_id}")
    err.print(f"{len(result.removed)} removed, {len(result.kept)} kept")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
