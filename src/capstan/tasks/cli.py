"""`capstan tasks ...`: submit and inspect tasks from the command line (operator tools)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from capstan.container import Container, build_container
from capstan.db.schema import Task
from capstan.settings import Settings
from capstan.tasks.schemas import TaskSubmit
from capstan.tasks.service import FINISHED, reset_for_retry, to_read

tasks_app = typer.Typer(help="Submit, inspect and recover tasks.", no_args_is_help=True)
err = Console(stderr=True)


async def _with_container(work: Any) -> Any:
    settings = Settings()
    if settings.database_url.startswith("sqlite"):
        from capstan.db.migrate import upgrade

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await upgrade(settings.database_url)  # embedded: the file may be new
    container = build_container(settings)
    await container.start()
    try:
        return await work(container)
    finally:
        await container.close()


@tasks_app.command("submit")
def submit(
    type: Annotated[str, typer.Argument(help="Task type, e.g. text.summarize")],
    input: Annotated[str, typer.Option("--input", help="Input as JSON.")] = "{}",
    tenant: Annotated[str, typer.Option(help="Tenant name.")] = "dev",
    wait: Annotated[bool, typer.Option(help="Wait for the result, showing progress.")] = False,
    idempotency_key: Annotated[str | None, typer.Option()] = None,
    priority: Annotated[int, typer.Option(min=0, max=9)] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
) -> None:
    """Queue a task; with --wait, print its result (embedded mode runs it in this process)."""
    try:
        data = json.loads(input)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--input is not JSON: {exc}") from exc
    body = TaskSubmit(type=type, input=data, idempotency_key=idempotency_key, priority=priority)

    async def go(c: Container) -> dict[str, Any]:
        from capstan.errors import CapstanError
        from capstan.tenants.service import tenant_by_name

        try:
            async with c.db() as session:
                owner = await tenant_by_name(session, tenant)
            task, _created = await c.tasks.submit(owner.id, body)
        except CapstanError as exc:
            err.print(f"[red]{exc.detail}[/red]")
            raise typer.Exit(1) from exc
        if not wait:
            return to_read(task).model_dump(mode="json")
        background = None
        if c.settings.broker_url.startswith("memory"):
            # No broker to reach a `capstan dev` process: run a relay and a worker here.
            from capstan.roles import Background

            background = Background(c, relay=True, subscribers=[], worker=True)
            await background.start()
        try:
            return await _wait(c, task.id, timeout)
        finally:
            if background is not None:
                await background.stop()

    result = asyncio.run(_with_container(go))
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
    if result.get("status") == "failed":
        raise typer.Exit(1)


async def _wait(c: Container, task_id: str, wait_seconds: float) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        shown = bar.add_task("queued", total=1.0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            async with c.db() as session:
                task = await session.scalar(select(Task).where(Task.id == task_id))
            assert task is not None
            label = task.status + (f": {task.progress_message}" if task.progress_message else "")
            bar.update(shown, completed=task.progress, description=label)
            if task.status in FINISHED:
                return to_read(task).model_dump(mode="json")
            if loop.time() > deadline:
                err.print(f"[yellow]still {task.status} after {wait_seconds:g} s[/yellow]")
                return to_read(task).model_dump(mode="json")
            await asyncio.sleep(0.1)


@tasks_app.command("get")
def get(task_id: str) -> None:
    """Print a task (any tenant's: this is an operator command)."""

    async def go(c: Container) -> dict[str, Any] | None:
        async with c.db() as session:
            task = await session.scalar(select(Task).where(Task.id == task_id))
        return None if task is None else to_read(task).model_dump(mode="json")

    found = asyncio.run(_with_container(go))
    if found is None:
        err.print(f"[red]no task {task_id}[/red]")
        raise typer.Exit(1)
    typer.echo(json.dumps(found, indent=2, ensure_ascii=False))


@tasks_app.command("dead-letters")
def dead_letters(
    queue: Annotated[
        list[str] | None, typer.Option(help="Task queue(s); default all configured.")
    ] = None,
    requeue: Annotated[
        bool, typer.Option(help="Give them a fresh attempt budget and requeue.")
    ] = False,
) -> None:
    """List tasks whose message was dead-lettered after their last attempt; optionally requeue."""
    from capstan.worker.queues import task_queue_spec

    async def go(c: Container) -> list[tuple[str, str, str | None]]:
        rows: list[tuple[str, str, str | None]] = []
        for name in queue or c.settings.worker_queues:
            spec = task_queue_spec(c.topology, name)
            letters = await c.broker.dead_letters(spec, limit=10_000)
            ids = [json.loads(m.body).get("task_id", "") for m in letters]
            async with c.db() as session:
                errors = dict(
                    (
                        await session.execute(select(Task.id, Task.error).where(Task.id.in_(ids)))
                    ).all()
                )
            rows += [(name, i, errors.get(i)) for i in ids]
            if requeue and ids:
                async with c.db.begin() as session:
                    await reset_for_retry(session, ids)
                await c.broker.requeue_dead_letters(spec)
        return rows

    rows = asyncio.run(_with_container(go))
    table = Table("queue", "task id", "last error")
    for row in rows:
        table.add_row(*[r or "" for r in row])
    Console().print(table)
    err.print(f"{len(rows)} dead-lettered task(s)" + (", requeued" if requeue and rows else ""))
