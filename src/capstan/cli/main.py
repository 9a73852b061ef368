"""`capstan`: run roles (dev, api), migrate, and manage tenants. Every command reads Settings."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.panel import Panel

from capstan.bench.read import app as bench_app
from capstan.settings import Settings

app = typer.Typer(help="Capstan: a self-hosted backend for AI applications.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants and their API keys.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(bench_app, name="bench")

err = Console(stderr=True)

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
    """Create or upgrade the database schema."""
    from capstan.db.migrate import upgrade

    settings = _settings()
    _ensure_data_dir(settings)
    asyncio.run(upgrade(settings.database_url))
    err.print("[green]database is up to date[/green]")


@tenants_app.command("create")
def tenants_create(
    name: str,
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


async def _create_tenant(settings: Settings, name: str) -> tuple[str, str]:
    from capstan.db.engine import create_engine, sessionmaker
    from capstan.db.migrate import upgrade
    from capstan.tenants.service import create_tenant

    await upgrade(settings.database_url)
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with sessionmaker(engine).begin() as session:
            created = await create_tenant(session, name)
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
    settings = _settings(data_dir, port)
    _ensure_data_dir(settings)
    key = asyncio.run(_dev_tenant(settings))
    base = f"http://{settings.host}:{settings.port}"
    err.print(
        Panel.fit(
            f"[bold]Capstan[/bold] (embedded) on {base}\n"
            f"API docs:  {base}/docs\n"
            f"data dir:  {settings.data_dir.resolve()}\n"
            f"dev key:   {key}\n\n"
            f'try:  curl -H "Authorization: Bearer {key}" {base}/v1/documents',
            title="capstan dev",
        )
    )
    _serve(settings)


async def _dev_tenant(settings: Settings) -> str:
    """The development tenant's key: created on first start, then read from the data dir."""
    key_file = settings.data_dir / DEV_KEY_FILE
    if key_file.exists():
        return key_file.read_text().strip()
    _tenant_id, key = await _create_tenant(settings, DEV_TENANT)
    key_file.write_text(key + "\n")
    os.chmod(key_file, 0o600)
    return key


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="Port (default CAPSTAN_PORT or 8000).")] = None,
) -> None:
    """Run the API role alone (production: backends by URL; run `capstan migrate` first)."""
    _serve(_settings(port=port))


def _serve(settings: Settings) -> None:
    from capstan.api.app import create_app
    from capstan.observability.logging import configure_logging

    configure_logging(settings.log_level, json=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )


def _ensure_data_dir(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    app()
