"""`capstan data check`: find (and fix) rows the API cannot read back."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

from capstan.container import Container
from capstan.repair import Finding, check
from capstan.tasks.cli import _with_container

data_app = typer.Typer(help="Stored data the API cannot read back.", no_args_is_help=True)
err = Console(stderr=True)


@data_app.command("check")
def data_check(
    fix: Annotated[
        bool, typer.Option("--fix", help="Rewrite each row with its values made storable.")
    ] = False,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (its id).")] = None,
) -> None:
    """Print documents and tasks holding values the API refuses today (lone surrogates, NUL,
    NaN, nesting deeper than 32 levels); exit 1 when some are found and --fix is not given."""

    async def go(c: Container) -> list[Finding]:
        return [finding async for finding in check(c, fix=fix, tenant_id=tenant)]

    findings: list[Finding] = asyncio.run(_with_container(go))
    for f in findings:  # one tab-separated line each, for scripts
        typer.echo("\t".join((f.table, f.row_id, f.tenant_id, f.problem, str(f.fixed).lower())))
    err.print(f"{len(findings)} unreadable row(s)" + (", fixed" if fix and findings else ""))
    if findings and not fix:
        raise typer.Exit(1)


@data_app.command("prune")
def data_prune() -> None:
    """Delete rows past their retention now (what the scheduler's retention job does)."""
    from capstan.scheduler.retention import prune

    deleted: dict[str, int] = asyncio.run(
        _with_container(lambda c: prune(c.db, c.settings, c.metrics))
    )
    for table, count in deleted.items():
        typer.echo(f"{table}\t{count}")
