"""`capstan embeddings status|reconcile`: the live space and the vectors' drift from the
database, against the configured database, vector stores and embedder."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.console import Console

from capstan.settings import Settings

app = typer.Typer(help="Embeddings: status and drift repair.", no_args_is_help=True)
err = Console(stderr=True)


@app.command("status")
def status_command(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant id.")] = None,
) -> None:
    """The live space (model, version, dimension) and how many documents are current."""
    typer.echo(json.dumps(asyncio.run(_run(Settings(), tenant, repair=False, status=True))))


@app.command("reconcile")
def reconcile_command(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant id.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, do not repair.")] = False,
) -> None:
    """Resubmit embedding tasks for documents whose vectors are missing or stale; remove
    vectors of documents that no longer exist."""
    report = asyncio.run(_run(Settings(), tenant, repair=not dry_run, status=False))
    typer.echo(json.dumps(report))


async def _run(
    settings: Settings, tenant: str | None, *, repair: bool, status: bool
) -> dict[str, Any]:
    from capstan.container import build_container
    from capstan.embeddings.reconcile import reconcile_embeddings

    c = build_container(settings)
    try:
        if c.embeddings is None:
            return {"unsupported": "embeddings are turned off or no vector store is configured"}
        pipeline = c.embeddings.pipeline
        report = await reconcile_embeddings(
            pipeline,
            c.db,
            c.tasks,
            grace_seconds=0 if status else settings.embeddings_reconcile_grace_seconds,
            tenants=[tenant] if tenant else None,
            repair=repair,
        )
        out = report.as_dict()
        if status:
            space = await pipeline.live_space()
            spaces = pipeline.spaces
            out = {
                "spaces": [] if spaces is None else [r.as_dict() for r in await spaces.all()],
                "space": {
                    "model": space.model,
                    "version": space.version,
                    "dimension": space.dimension,
                },
                "stores": [s.name for s in await pipeline.stores()],
                "documents": report.documents,
                "current": report.current,
                "missing": report.missing,
                "stale": report.stale,
                "extra": report.extra,
            }
        return out
    finally:
        await c.close()


@app.command("rebuild")
def rebuild_command() -> None:
    """Re-embed every document into the configured model's space now, if it is not live yet
    (the embeddings reconciler does this by itself; this shows the progress)."""
    typer.echo(json.dumps(asyncio.run(_rebuild(Settings()))))


async def _rebuild(settings: Settings) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from capstan.container import build_container
    from capstan.embeddings.reconcile import rebuild

    c = build_container(settings)
    try:
        if c.embeddings is None or c.embeddings.pipeline.spaces is None:
            return {"unsupported": "embeddings are turned off"}
        pipeline = c.embeddings.pipeline
        spaces = pipeline.spaces
        assert spaces is not None
        live, building = await spaces.sync(await pipeline.write_space())
        if building is None:
            return {"skipped": f"the configured space {live.key} is already live"}
        if not await spaces.claim(building):
            row = next(r for r in await spaces.all() if r.space == building)
            return {"busy": "another process is building it", **row.as_dict()}
        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*Progress.get_default_columns()[:1], *columns, console=err) as bar:
            task = bar.add_task(f"re-embedding into {building.key}", total=None)

            async def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return await rebuild(pipeline, c.db, building, progress)
    finally:
        await c.close()
