"""`capstan`: run roles (dev, api), migrate, and manage tenants. Every command reads Settings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.panel import Panel

import capstan
from capstan.backups.cli import app as backup_app
from capstan.cli.data import data_app
from capstan.cli.doctor import doctor
from capstan.cli.failures import describe
from capstan.cli.keys import keys_app, register_tenant_commands
from capstan.cli.plugins import add_plugins
from capstan.container import build_container
from capstan.db.dialect import dialect_for
from capstan.embeddings.cli import app as embeddings_app
from capstan.search.cli import app as search_app
from capstan.settings import Settings
from capstan.tasks.cli import require_broker, tasks_app

app = typer.Typer(help="Capstan: a self-hosted backend for AI applications.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants and their API keys.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
register_tenant_commands(tenants_app)
app.add_typer(keys_app, name="keys")
events_app = typer.Typer(help="Recover and inspect the event flow.", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(tasks_app, name="tasks")
app.add_typer(search_app, name="search")
app.add_typer(embeddings_app, name="embeddings")
app.add_typer(backup_app, name="backup")
app.add_typer(data_app, name="data")
broker_app = typer.Typer(help="The RabbitMQ namespace Capstan uses.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
db_app = typer.Typer(help="PostgreSQL operations (scale-out topology).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.command()(doctor)
add_plugins(app)  # `capstan bench` and any other installed command group

err = Console(stderr=True, soft_wrap=True)  # paths and URLs stay whole


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"capstan {capstan.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Capstan: a self-hosted backend for AI applications."""


def main() -> None:
    """The `capstan` entry point: an operational failure (a server down, a bad setting) is one
    line saying what to do, not a traceback; CAPSTAN_DEBUG=1 shows the traceback."""
    try:
        app()
    except Exception as exc:
        if os.environ.get("CAPSTAN_DEBUG"):
            raise
        err.print(f"[red]error:[/red] {describe(exc)}", highlight=False)
        raise SystemExit(1) from None


DEV_TENANT = "dev"
DEV_KEY_FILE = "dev-api-key"


def _settings(data_dir: Path | None = None, port: int | None = None) -> Settings:
    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if port is not None:
        overrides["port"] = port
    return Settings(**overrides)  # type: ignore[arg-type]


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema, and say what was applied."""
    from capstan.db.migrate import upgrade
    from capstan.observability.redaction import display_url

    settings = _settings()
    _ensure_data_dir(settings)
    where = display_url(settings.database_url)
    applied = asyncio.run(upgrade(settings.database_url))
    if applied:
        err.print(
            f"[green]applied {len(applied)} migration(s)[/green] to {where}: {', '.join(applied)}"
        )
    else:
        err.print(f"{where} was already up to date: nothing to apply")


def _tenant_name(value: str) -> str:
    if not value.strip():
        raise typer.BadParameter("a tenant name cannot be empty")
    return value.strip()


@tenants_app.command("create")
def tenants_create(
    name: Annotated[
        str, typer.Argument(help="A name for the tenant (unique).", callback=_tenant_name)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Create a tenant and print its first API key (shown once, stored hashed)."""
    from capstan.errors import Conflict

    settings = _settings()
    _ensure_data_dir(settings)
    try:
        created = asyncio.run(_create_tenant(settings, name))
    except Conflict as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps({"tenant_id": created[0], "api_key": created[1]}))
    else:
        err.print(f"tenant [bold]{name}[/bold] ({created[0]})")
        err.print("API key (shown once):")
        typer.echo(created[1])


async def _create_tenant(settings: Settings, name: str, *, admin: bool = False) -> tuple[str, str]:
    from sqlalchemy import update

    from capstan.db.engine import create_engine, sessionmaker
    from capstan.db.migrate import upgrade
    from capstan.db.schema import ApiKey
    from capstan.tenants.service import create_tenant

    await upgrade(settings.database_url)
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with sessionmaker(engine).begin() as session:
            created = await create_tenant(session, name)
            if admin:
                await session.execute(
                    update(ApiKey).where(ApiKey.tenant_id == created.tenant_id).values(admin=True)
                )
    finally:
        await engine.dispose()
    return created.tenant_id, created.api_key


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Port for the API.")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where embedded data lives (CAPSTAN_DATA_DIR).")
    ] = None,
) -> None:
    """Run everything in one process, embedded (SQLite, memory cache and broker): no servers."""
    from capstan.cli.running import AlreadyRunning, DevServerLock
    from capstan.datadir import remember

    settings = _settings(data_dir, port)
    if "CAPSTAN_WEBHOOK_ALLOW_PRIVATE" not in os.environ:
        # On a developer's machine the webhook receiver is usually on localhost.
        settings = settings.model_copy(update={"webhook_allow_private": True})
    _ensure_data_dir(settings, quiet=True)
    base = f"http://{settings.host}:{settings.port}"
    webhooks = (
        "[yellow]private and loopback targets ALLOWED[/yellow] "
        "(CAPSTAN_WEBHOOK_ALLOW_PRIVATE=false refuses them)"
        if settings.webhook_allow_private
        else "private and loopback targets refused"
    )
    try:
        lock = DevServerLock(settings.data_dir, base)
    except AlreadyRunning as exc:
        err.print(
            f"[red]error:[/red] another capstan dev ({exc}) already serves the data dir "
            f"{settings.data_dir}: stop it, or give this one --data-dir DIR"
        )
        raise typer.Exit(2) from exc
    try:
        listener = _listen(settings, hint="choose another with `scripts/dev --port N`")
        remember(settings.data_dir)
        key = asyncio.run(_dev_tenant(settings))
        err.print(
            Panel.fit(
                f"[bold]Capstan[/bold] (embedded) on {base}\n"
                f"API docs:  {base}/docs\n"
                f"data dir:  {settings.data_dir.resolve()}\n"
                f"dev key:   {key} (admin scope)\n"
                f"webhooks:  {webhooks}\n\n"
                f'try:  curl -H "Authorization: Bearer {key}" {base}/v1/documents',
                title="capstan dev",
            )
        )
        _serve(settings, listener, with_background=True)
    finally:
        lock.release()


async def _dev_tenant(settings: Settings) -> str:
    """The development tenant's key: created on first start, then read from the data dir."""
    key_file = settings.data_dir / DEV_KEY_FILE
    if key_file.exists():
        return key_file.read_text().strip()
    # The developer is the operator too: the dev key has the admin scope (workers, reindex).
    _tenant_id, key = await _create_tenant(settings, DEV_TENANT, admin=True)
    key_file.write_text(key + "\n")
    os.chmod(key_file, 0o600)
    return key


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="Port (default CAPSTAN_PORT or 8000).")] = None,
) -> None:
    """Run the API role alone (production: backends by URL; run `capstan migrate` first)."""
    settings = _settings(port=port)
    _serve(settings, _listen(settings, hint="choose another with --port N or CAPSTAN_PORT"))


@app.command()
def relay() -> None:
    """Run the outbox relay: committed events → RabbitMQ, with publisher confirms."""
    _run_background(_settings(), "relay", relay=True, subscribers=None)


@app.command()
def scheduler() -> None:
    """Run the scheduler: backups on CAPSTAN_BACKUP_SCHEDULE (verified, then pruned)."""
    _run_background(_settings(), "scheduler", relay=False, subscribers=None, scheduler=True)


@app.command()
def subscriber(
    names: Annotated[
        list[str],
        typer.Argument(help="Subscribers to run (indexer, cache, audit, notifier) or all."),
    ],
) -> None:
    """Run subscriber services, each consuming its own durable queue."""
    _run_background(_settings(), "subscriber", relay=False, subscribers=names)


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Tasks at once (default CAPSTAN_WORKER_CONCURRENCY).")
    ] = None,
    queues: Annotated[
        list[str] | None, typer.Option("--queue", help="Queue(s) to consume; repeatable.")
    ] = None,
) -> None:
    """Run a task worker: consume task queues, run handlers, commit results."""
    _run_background(
        _settings(),
        "worker",
        relay=False,
        subscribers=None,
        worker=True,
        worker_queues=queues or None,
        worker_concurrency=concurrency,
    )


def _run_background(
    settings: Settings,
    role: str,
    *,
    relay: bool,
    subscribers: list[str] | None,
    worker: bool = False,
    worker_queues: list[str] | None = None,
    worker_concurrency: int | None = None,
    scheduler: bool = False,
) -> None:
    from capstan.eventloop import run
    from capstan.observability.logging import configure_logging
    from capstan.roles import RoleError, run_background, with_metrics_port

    settings = with_metrics_port(settings, role)
    configure_logging(settings.log_level, json=settings.log_json)
    try:
        run(
            run_background(
                settings,
                relay=relay,
                subscribers=subscribers,
                worker=worker,
                worker_queues=worker_queues,
                worker_concurrency=worker_concurrency,
                scheduler=scheduler,
            )
        )
    except (ValueError, RoleError) as exc:  # a bad setting, a busy metrics port
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc


@events_app.command("replay")
def events_replay(
    since: Annotated[datetime, typer.Option(help="Replay events from this time (ISO 8601, UTC).")],
    subscriber: Annotated[
        str | None, typer.Option(help="Only this subscriber, which re-applies them.")
    ] = None,
    source: Annotated[
        str, typer.Option("--from", help="Where to read them: audit (default) or outbox.")
    ] = "audit",
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's events (its id).")] = None,
) -> None:
    """Publish events again for recovery (subscribers skip what they already applied)."""
    from rich.progress import Progress

    from capstan.composition import event_flow
    from capstan.events.operations import replay

    if source not in ("audit", "outbox"):
        raise typer.BadParameter("--from is audit or outbox")
    require_broker(_settings(), "events replay")
    when = since if since.tzinfo else since.replace(tzinfo=UTC)

    async def go() -> int:
        container = build_container(_settings())
        await container.start()
        try:
            with Progress(console=err, transient=True) as bar:
                task = bar.add_task("replaying", total=None)
                return await replay(
                    event_flow(container),
                    when,
                    subscriber=subscriber,
                    source=source,  # type: ignore[arg-type]
                    tenant_id=tenant,
                    progress=lambda n: bar.advance(task, n),
                )
        finally:
            await container.close()

    count = asyncio.run(go())
    err.print(f"replayed [bold]{count}[/bold] event(s) since {when.isoformat()}")


@events_app.command("dead-letters")
def events_dead_letters(
    subscriber: Annotated[
        list[str] | None, typer.Option(help="Subscriber(s); default all.")
    ] = None,
    requeue: Annotated[bool, typer.Option(help="Move them back to their queues.")] = False,
) -> None:
    """List dead-lettered events per subscriber, and optionally requeue them."""
    from rich.table import Table

    from capstan.composition import event_flow
    from capstan.events.operations import DeadLetter, dead_letters

    require_broker(_settings(), "events dead-letters")

    async def go() -> list[DeadLetter]:
        container = build_container(_settings())
        await container.start()
        try:
            return list(
                await dead_letters(event_flow(container), subscriber or [], requeue=requeue)
            )
        finally:
            await container.close()

    letters = asyncio.run(go())
    table = Table("subscriber", "event id", "routing key", "reason")
    for letter in letters:
        table.add_row(letter.subscriber, letter.event_id, letter.routing_key, letter.reason)
    Console().print(table)
    err.print(f"{len(letters)} dead letter(s)" + (", requeued" if requeue and letters else ""))


def _listen(settings: Settings, *, hint: str) -> socket.socket:
    """The API's listening socket, bound before anything is printed: a busy port is one line
    with what to do, not a banner followed by a stack trace."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        err.print(
            f"[red]error:[/red] cannot listen on {settings.host}:{settings.port} "
            f"({exc.strerror}): {hint}",
            highlight=False,
        )
        raise typer.Exit(2) from exc
    return sock


def _serve(settings: Settings, listener: socket.socket, *, with_background: bool = False) -> None:
    from capstan.api.app import create_app
    from capstan.observability.logging import configure_logging

    configure_logging(settings.log_level, json=settings.log_json)
    # capstan dev: also the scheduler (backups into data_dir/backups)
    app_ = create_app(settings, with_background=with_background, with_scheduler=with_background)
    config = uvicorn.Config(
        app_,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )
    # uvicorn announces only the sockets it binds itself; this one was bound by _listen.
    logging.getLogger("capstan.api").info(
        "listening on http://%s:%d (docs: /docs)", settings.host, settings.port
    )
    # uvicorn re-raises the SIGINT it drained on; like uvicorn.run, ^C is a clean exit.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[listener])


def _ensure_data_dir(settings: Settings, *, quiet: bool = False) -> None:
    """Create the embedded data dir; say loudly when a command is about to start a new one,
    since a server elsewhere would not know what it holds."""
    from capstan.datadir import locate

    if not dialect_for(settings.database_url).is_file or "CAPSTAN_DATA_DIR" in os.environ:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return
    _path, how = locate()
    if how == "last-dev" and not quiet:
        err.print(f"using the data dir of the last `capstan dev`: {settings.data_dir}")
    if not settings.data_dir.exists() and not quiet:
        err.print(
            f"[yellow]warning:[/yellow] no Capstan data dir in {Path.cwd()} or its parents: "
            f"creating a new, empty one at {settings.data_dir}. A `capstan dev` started "
            "elsewhere does not see it: run this in that directory or set CAPSTAN_DATA_DIR.",
            highlight=False,
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)


@broker_app.command("remove-namespace")
def broker_remove_namespace(
    namespace: Annotated[str, typer.Argument(help="The namespace (CAPSTAN_BROKER_NAMESPACE).")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every queue (with its messages) and exchange named NAMESPACE.* on the broker
    (CAPSTAN_BROKER_URL; names listed by the management API): for a retired deployment, or a
    test or benchmark run's leftovers."""
    from capstan.broker.namespaces import list_namespace, remove_namespace

    settings = _settings()
    url, mgmt = settings.broker_url, settings.broker_management_url
    if not url.startswith(("amqp://", "amqps://")):
        raise typer.BadParameter("CAPSTAN_BROKER_URL is not a RabbitMQ (amqp://) URL")
    if namespace == settings.broker_namespace and not yes:
        err.print(f"[yellow]{namespace} is this deployment's own namespace[/yellow]")
    found = asyncio.run(list_namespace(url, namespace, mgmt))
    if not found.all():
        err.print(f"nothing named {namespace}.* on the broker")
        return
    err.print(f"{len(found.queues)} queue(s), {len(found.exchanges)} exchange(s) in {namespace}")
    if not yes and not typer.confirm("Delete them, with their messages?"):
        raise typer.Exit(1)
    left = asyncio.run(remove_namespace(url, namespace, mgmt_url=mgmt))
    if left:
        err.print(f"[red]could not delete: {', '.join(left)}[/red]")
        raise typer.Exit(1)
    err.print(f"[green]deleted broker namespace {namespace}[/green]")


@db_app.command("promote")
def db_promote(
    url: Annotated[str, typer.Argument(help="The replica to promote (one server's URL).")],
    wait: Annotated[int, typer.Option(help="Seconds to wait for the promotion.")] = 60,
) -> None:
    """Promote a streaming replica to primary once the primary is lost (and fenced: a
    primary that comes back must not take writes again, docs/deployment.md)."""
    from capstan.db.promote import promote

    if "," in url.rpartition("@")[2].split("/")[0]:
        raise typer.BadParameter("give the URL of the one replica to promote, not a host list")
    result = asyncio.run(promote(url, wait_seconds=wait))
    if result.promoted:
        err.print(f"[green]promoted: now the primary, timeline {result.timeline}[/green]")
    else:
        err.print(f"[yellow]already a primary (timeline {result.timeline}): nothing done[/yellow]")


if __name__ == "__main__":
    main()
