"""`capstan search reindex|reconcile`: run against the configured database and Elasticsearch."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console

from capstan.settings import Settings

app = typer.Typer(help="Search index: rebuild and reconcile.", no_args_is_help=True)
err = Console(stderr=True)


@app.command("reindex")
def reindex_command(
    keep_old: Annotated[bool, typer.Option(help="Keep the previous index after the swap.")] = False,
    if_stale: Annotated[
        bool,
        typer.Option(
            "--if-stale",
            help="Only when the index is missing or predates the current search analysis "
            "(what an upgrade runs after `capstan migrate`).",
        ),
    ] = False,
) -> None:
    """Rebuild the index from the database into a new one and swap the alias (no downtime)."""
    from capstan.search.reindex import ReindexUnsupported

    try:
        report = asyncio.run(_reindex(Settings(), keep_old, if_stale))
    except ReindexUnsupported as exc:
        err.print(f"[yellow]{exc}[/yellow]")
        raise typer.Exit(0) from exc
    typer.echo(json.dumps(report))


async def _reindex(settings: Settings, keep_old: bool, if_stale: bool) -> dict[str, object]:
    from capstan.container import build_container
    from capstan.search.analysis import ANALYSIS_VERSION
    from capstan.search.elasticsearch import ElasticsearchEngine
    from capstan.search.reindex import reindex

    c = build_container(settings)
    try:
        # A missing index is rebuilt too: the database may hold documents it never saw.
        if (
            if_stale
            and isinstance(c.search, ElasticsearchEngine)
            and await c.search.read_index() is not None
            and await c.search.analyzed()
        ):
            return {"skipped": f"the index already has analysis version {ANALYSIS_VERSION}"}

        def progress(done: int, total: int) -> None:
            err.print(f"reindex: {done}/{total}", end="\r")

        report = await reindex(c.search, c.db, progress, keep_old=keep_old)
        err.print()
        return report.as_dict()
    finally:
        await c.close()


@app.command("reconcile")
def reconcile_command(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant id.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, do not repair.")] = False,
) -> None:
    """Compare the database and the index (ids and versions) and repair the differences."""
    report = asyncio.run(_reconcile(Settings(), tenant, not dry_run))
    typer.echo(json.dumps(report))
    if report.get("unsupported"):
        raise typer.Exit(0)


async def _reconcile(settings: Settings, tenant: str | None, repair: bool) -> dict[str, object]:
    from capstan.container import build_container
    from capstan.search.elasticsearch import ElasticsearchEngine
    from capstan.search.reconcile import reconcile

    c = build_container(settings)
    try:
        if not isinstance(c.search, ElasticsearchEngine):
            return {"unsupported": f"{c.search.name} is kept by the database; nothing to do"}
        report = await reconcile(
            c.search,
            c.db,
            c.metrics,
            grace_seconds=settings.search_reconcile_grace_seconds,
            tenants=[tenant] if tenant else None,
            repair=repair,
        )
        return report.as_dict()
    finally:
        await c.close()
