"""`capstan tasks ...`: submit and inspect tasks from the command line (operator tools)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from capstan.cli.running import running_server
from capstan.container import Container, build_container
from capstan.db.dialect import dialect_for
from capstan.db.schema import OutboxEvent, Task
from capstan.settings import Settings
from capstan.tasks.registry import check_submit
from capstan.tasks.schemas import TaskSubmit
from capstan.tasks.service import FINISHED, reset_for_retry, to_read

tasks_app = typer.Typer(help="Submit, inspect and recover tasks.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)  # paths and URLs stay whole


async def _with_container(work: Any) -> Any:
    settings = Settings()
    if dialect_for(settings.database_url).is_file:
        from capstan.db.migrate import upgrade

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await upgrade(settings.database_url)  # embedded: the file may be new
    container = build_container(settings)
    await container.start()
    try:
        return await work(container)
    finally:
        await container.close()


def require_broker(settings: Settings, command: str) -> None:
    """Refuse, in one line, a broker operation that embedded mode has no broker for."""
    if settings.broker_in_process:
        err.print(
            f"[red]error:[/red] `capstan {command}` works on RabbitMQ, and this is embedded mode "
            "(CAPSTAN_BROKER_URL=memory://): its queues live inside the `capstan dev` process. "
            "Set CAPSTAN_BROKER_URL=amqp://... to reach a production broker.",
            highlight=False,
        )
        raise typer.Exit(2)


def _task_body(type: str, input: str, idempotency_key: str | None, priority: int) -> TaskSubmit:
    """The request as the API would take it; a mistake is a one-line usage error."""
    try:
        data = json.loads(input)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--input") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(
            f'must be a JSON object like \'{{"text": "..."}}\', not {type_name(data)}',
            param_hint="--input",
        )
    try:
        return TaskSubmit(type=type, input=data, idempotency_key=idempotency_key, priority=priority)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = ".".join(str(p) for p in problem["loc"])
        hint = {"type": "TYPE", "idempotency_key": "--idempotency-key"}.get(field, field)
        raise typer.BadParameter(problem["msg"], param_hint=hint) from exc


def type_name(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


@tasks_app.command("submit")
def submit(
    type: Annotated[str, typer.Argument(help="Task type, e.g. text.summarize")],
    input: Annotated[str, typer.Option("--input", help="Input as a JSON object.")] = "{}",
    tenant: Annotated[str, typer.Option(help="Tenant name.")] = "dev",
    wait: Annotated[bool, typer.Option(help="Wait for the result, showing progress.")] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="The same key again returns the same task.")
    ] = None,
    priority: Annotated[int, typer.Option(min=0, max=9, help="0 (default) to 9 (first).")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600.0,
) -> None:
    """Queue a task; with --wait, print its result. In embedded mode a running `capstan dev`
    on the same data dir runs it; with none, this process does."""
    body = _task_body(type, input, idempotency_key, priority)

    async def go(c: Container) -> dict[str, Any]:
        from capstan.errors import CapstanError
        from capstan.tenants.service import tenant_by_name

        try:
            async with c.db() as session:
                owner = await tenant_by_name(session, tenant)
            await check_submit(c.task_registry, owner.id, body)
            task, _created = await c.tasks.submit(owner.id, body)
        except CapstanError as exc:
            err.print(f"[red]{exc.detail}[/red]")
            raise typer.Exit(1) from exc
        if not c.settings.broker_in_process:
            # Production: the task and its message are in the outbox; the relay and workers
            # of the deployment take it from there, like a task submitted through the API.
            return (
                to_read(task).model_dump(mode="json")
                if not wait
                else await _wait(c, task.id, timeout)
            )
        server = running_server(c.settings.data_dir)
        if server is not None:
            # The same durable path as the API: the outbox row committed above is published
            # by the server's relay (it polls), so its worker runs the task and the events
            # reach the server's audit log, webhooks and realtime feed.
            err.print(f"queued {task.id} for the capstan dev at {server}")
            return (
                await _wait(c, task.id, timeout) if wait else to_read(task).model_dump(mode="json")
            )
        if not wait:
            err.print(
                f"queued {task.id}: no capstan dev runs on {c.settings.data_dir}; "
                "it runs when one starts there"
            )
            return to_read(task).model_dump(mode="json")
        # No server: run the relay, a worker and the subscribers here, so the task's events
        # are audited (and webhooks queued) as a server would, then stop once they are.
        from capstan.composition import build_background

        err.print(f"no capstan dev runs on {c.settings.data_dir}: running {task.id} here")
        background = build_background(c, relay=True, subscribers=["all"], worker=True)
        await background.start()
        try:
            result = await _wait(c, task.id, timeout)
            if result["status"] in FINISHED:
                await _drain(c, background, f"tasks/{task.id}")
            return result
        finally:
            await background.stop()

    result = asyncio.run(_with_container(go))
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
    if result.get("status") == "failed":
        raise typer.Exit(1)


async def _drain(c: Container, background: Any, subject: str, seconds: float = 10.0) -> None:
    """Until the events about `subject` are published and every subscriber queue is empty, so
    stopping this process loses none of them (an in-process queue dies with it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        c.wake_relays()
        async with c.db() as session:
            unpublished = await session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.subject == subject, OutboxEvent.published_at.is_(None))
            )
        depths = [await c.broker.queue_depth(r.spec.name) for r in background.runners]
        if not unpublished and not any(depths):
            return
        await asyncio.sleep(0.05)


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
def get(task_id: Annotated[str, typer.Argument(help="The task's id.")]) -> None:
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

    require_broker(Settings(), "tasks dead-letters")

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
