"""`capstan doctor`: settings, versions, servers, migrations and ports, each with what to do."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

import capstan
from capstan.db.dialect import dialect_for
from capstan.observability.redaction import display_url
from capstan.settings import Settings

Status = Literal["ok", "warn", "fail"]
TIMEOUT = 3.0


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check settings, versions, servers, migrations and ports, and say what to do."""
    try:
        settings = Settings()
    except ValidationError as exc:
        checks = [_settings_failure(exc)]
    else:
        checks = asyncio.run(run_checks(settings))
    if as_json:
        typer.echo(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        _print(checks)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


def _settings_failure(exc: ValidationError) -> Check:
    problems = "; ".join(
        f"CAPSTAN_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
    )
    return Check("settings", "fail", problems, "fix these CAPSTAN_* variables")


def _print(checks: list[Check]) -> None:
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    table = Table("check", "", "detail", show_lines=False)
    for c in checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail)
    out = Console()
    out.print(table)
    todo = [c for c in checks if c.fix and c.status != "ok"]
    for c in todo:
        out.print(f"[{colour[c.status]}]{c.name}[/]: {c.fix}", highlight=False)
    if not todo:
        out.print("[green]all good[/green]")


async def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a person would fix them."""
    checks = [_settings_check(settings), *_versions()]
    servers = [
        ("database", _database(settings)),
        ("cache", _redis(settings.cache_url)),
        ("broker", _rabbitmq(settings.broker_url)),
        ("search", _elasticsearch(settings.search_url)),
    ]
    for name, probe in servers:
        checks.append(await _bounded(name, probe))
    if checks[-4].status != "fail":  # the database answered: are its migrations applied?
        checks.append(await _bounded("migrations", _migrations(settings)))
        if checks[-1].status == "ok":
            checks.append(await _bounded("vectors", _vectors(settings)))
    checks.append(await _bounded("embeddings", _embeddings(settings)))
    checks += _ports(settings)
    return checks


async def _bounded(name: str, probe: Awaitable[Check]) -> Check:
    try:
        return await asyncio.wait_for(probe, TIMEOUT * 2)
    except TimeoutError:
        return Check(name, "fail", "no answer", "is the server running and reachable?")


def _settings_check(s: Settings) -> Check:
    from capstan.datadir import locate

    mode = "embedded" if s.embedded else "production"
    where = f"data dir {s.data_dir}"
    if dialect_for(s.database_url).is_file and "CAPSTAN_DATA_DIR" not in os.environ:
        how = locate()[1]
        where += {"found": "", "last-dev": " (the last capstan dev's)", "new": " (not created)"}[
            how
        ]
    return Check("settings", "ok", f"{mode} mode; {where}")


def _versions() -> list[Check]:
    py = platform.python_version()
    checks = [
        Check(
            "capstan",
            "ok" if sys.version_info >= (3, 11) else "fail",
            f"capstan {capstan.__version__} on Python {py}",
            "Capstan needs Python 3.11 or newer",
        )
    ]
    node = shutil.which("node")
    if node is None:
        checks.append(
            Check("node", "warn", "node not found", "the gateway (:3001) needs Node.js 20+")
        )
    else:
        version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
        major = int(version.strip().lstrip("v").split(".")[0] or 0)
        checks.append(
            Check(
                "node",
                "ok" if major >= 20 else "warn",
                f"node {version.strip()}",
                "the gateway needs Node.js 20 or newer",
            )
        )
    return checks


async def _database(s: Settings) -> Check:
    from sqlalchemy import text

    dialect = dialect_for(s.database_url)
    if dialect.is_file and not s.data_dir.exists():
        return Check(
            "database",
            "fail",
            f"no data dir at {s.data_dir}",
            "start `scripts/dev` (or run `capstan migrate`) here, or set CAPSTAN_DATA_DIR",
        )
    engine = dialect.create_engine(s.database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            if dialect.is_file:
                version = await conn.scalar(text("SELECT sqlite_version()"))
                return Check("database", "ok", f"SQLite {version} ({display_url(s.database_url)})")
            number = int(await conn.scalar(text("SHOW server_version_num")) or 0)
    except Exception as exc:
        return Check(
            "database",
            "fail",
            f"{display_url(s.database_url)}: {_first_line(exc)}",
            "start PostgreSQL or fix CAPSTAN_DATABASE_URL",
        )
    finally:
        await engine.dispose()
    shown = f"PostgreSQL {number // 10000}.{number % 10000} ({display_url(s.database_url)})"
    if number < 150000:
        return Check("database", "warn", shown, "Capstan is tested on PostgreSQL 15 or newer")
    return Check("database", "ok", shown)


async def _redis(url: str) -> Check:
    if url.startswith("memory"):
        return Check("cache", "ok", "in-process memory (embedded)")
    from capstan.cache.connect import redis_from_url

    # A Sentinel URL reaches the primary the sentinels name now.
    client = redis_from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    try:
        info = await client.info("server")
    except Exception as exc:
        return Check(
            "cache",
            "fail",
            f"{display_url(url)}: {_first_line(exc)}",
            "start Redis or fix CAPSTAN_CACHE_URL",
        )
    finally:
        await client.aclose()
    version = str(info.get("redis_version", "?"))
    status: Status = "ok" if int(version.split(".")[0] or 0) >= 7 else "warn"
    return Check("cache", status, f"Redis {version} ({display_url(url)})", "Capstan needs Redis 7+")


async def _rabbitmq(url: str) -> Check:
    if url.startswith("memory"):
        return Check("broker", "ok", "in-process queues (embedded)")
    import aiormq

    from capstan.node_urls import node_urls

    # A cluster: every node is tried; one down is a warning (the roles use the others).
    versions: list[str] = []
    down: list[str] = []
    for node in node_urls(url):
        try:
            connection = await aiormq.connect(node)
        except Exception as exc:
            down.append(f"{display_url(node)}: {_first_line(exc)}")
            continue
        try:
            raw = connection.server_properties.get("version", "?")
            versions.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        finally:
            await connection.close()
    if not versions:
        return Check("broker", "fail", "; ".join(down), "start RabbitMQ or fix CAPSTAN_BROKER_URL")
    version = min(versions)
    parts = [int(p) if p.isdigit() else 0 for p in [*version.split("."), "0", "0"][:2]]
    shown = f"RabbitMQ {version} ({display_url(url)})"
    if down:
        return Check("broker", "warn", f"{shown}; down: {'; '.join(down)}", "start the node")
    status: Status = "ok" if tuple(parts) >= (3, 10) else "warn"
    return Check("broker", status, shown, "Capstan needs RabbitMQ 3.10+")


async def _elasticsearch(url: str) -> Check:
    if not url.startswith("http"):
        return Check("search", "ok", "SQLite FTS5 (embedded)")
    from capstan.node_urls import node_urls

    try:
        version = await _es_version(node_urls(url))
    except Exception as exc:
        return Check(
            "search",
            "warn",
            f"{display_url(url)}: {_first_line(exc)}",
            "start Elasticsearch or fix CAPSTAN_SEARCH_URL (meanwhile search is degraded: "
            "PostgreSQL full-text answers)",
        )
    status: Status = "ok" if version.startswith("8.") else "warn"
    return Check("search", status, f"Elasticsearch {version} ({display_url(url)})", "use 8.x")


async def _es_version(nodes: list[str]) -> str:
    """The lowest node version, asked of the first node that answers (the client does the same)."""
    failure: Exception | None = None
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        for base in nodes:
            try:
                # The nodes API, not GET /: a proxy or a locked-down cluster may refuse the root.
                answer = await http.get(
                    f"{base.rstrip('/')}/_nodes", params={"filter_path": "nodes.*.version"}
                )
                answer.raise_for_status()
                return min(str(n["version"]) for n in answer.json()["nodes"].values())
            except Exception as exc:
                failure = exc
    raise failure or ValueError("no node")


async def _embeddings(s: Settings) -> Check:
    """The offline model loads, or the configured endpoint answers a probe (docs/embeddings.md)."""
    from capstan.embeddings.factory import build_embedder
    from capstan.embeddings.port import EmbeddingError

    fix = (
        "fix CAPSTAN_EMBEDDINGS_URL / _MODEL / _API_KEY, or unset the URL for the offline model"
        if s.embeddings_url
        else "reinstall Capstan (scripts/bootstrap, or pip install -c constraints.txt .)"
    )
    options = s.model_copy(
        update={"embeddings_max_attempts": 1, "embeddings_timeout_seconds": TIMEOUT}
    )
    try:
        embedder = await build_embedder(options)
    except (EmbeddingError, httpx.HTTPError, ValueError) as exc:
        return Check("embeddings", "fail", str(exc), fix)
    await embedder.aclose()
    where = f"endpoint {display_url(s.embeddings_url)}" if s.embeddings_url else "offline"
    return Check(
        "embeddings",
        "ok",
        f"{where}: {embedder.model}, {embedder.dimension} dimensions, version {embedder.version}",
    )


async def _migrations(s: Settings) -> Check:
    from capstan.db.migrate import pending

    missing = await pending(s.database_url)
    if missing:
        return Check(
            "migrations",
            "fail",
            f"{len(missing)} not applied: {', '.join(missing)}",
            "run `capstan migrate`",
        )
    return Check("migrations", "ok", "the schema is up to date")


async def _vectors(s: Settings) -> Check:
    """Which vector store the database gives (docs/embeddings.md): pgvector or exact scoring."""
    from sqlalchemy import text

    from capstan.db.dialect import dialect_for
    from capstan.db.engine import create_engine

    if dialect_for(s.database_url).is_file:
        return Check("vectors", "ok", "SQLite: exact cosine over the filtered chunks (numpy)")
    engine = create_engine(s.database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            enabled = await conn.scalar(
                text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            )
            available = await conn.scalar(
                text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
            )
            column = await conn.scalar(
                text(
                    "SELECT count(*) FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = 'vector_chunks' "
                    "AND column_name = 'embedding'"
                )
            )
    finally:
        await engine.dispose()
    slow = "vectors are scored in the process (exact, slower)"
    if enabled and column:
        return Check("vectors", "ok", f"pgvector {enabled}: HNSW index per space")
    if enabled or available:
        return Check(
            "vectors",
            "warn",
            f"pgvector {enabled or available} is installed but not in use here: {slow}",
            "as a superuser: CREATE EXTENSION IF NOT EXISTS vector; ALTER TABLE vector_chunks "
            "ADD COLUMN embedding vector; then re-embed (a new embeddings version)",
        )
    return Check(
        "vectors",
        "warn",
        f"pgvector is not installed on the server: {slow}",
        "install pgvector for this PostgreSQL (scripts/services builds it), then see "
        "docs/embeddings.md",
    )


def _ports(s: Settings) -> list[Check]:
    from capstan.cli.running import running_server
    from capstan.roles import ROLE_METRICS_PORTS

    checks = []
    if dialect_for(s.database_url).is_file:
        url = running_server(s.data_dir) if s.data_dir.exists() else None
        checks.append(
            Check(
                "capstan dev", "ok", f"running at {url}" if url else "not running on this data dir"
            )
        )
    wanted = {"api": s.port}
    for role, port in ROLE_METRICS_PORTS.items():
        wanted[f"{role} metrics"] = s.metrics_port if s.metrics_port is not None else port
    for role, port in wanted.items():
        if not port:
            continue
        checks.append(_port(role, s.host, port))
    return checks


def _port(role: str, host: str, port: int) -> Check:
    with socket.socket() as probe:
        probe.settimeout(TIMEOUT)
        in_use = probe.connect_ex((host, port)) == 0
    name = f"port {port}"
    if not in_use:
        return Check(name, "ok", f"free for the {role}")
    try:
        healthy = httpx.get(f"http://{host}:{port}/healthz", timeout=TIMEOUT).status_code == 200
    except httpx.HTTPError:
        healthy = False
    if healthy:
        return Check(name, "ok", f"a Capstan process answers /healthz (the {role}?)")
    setting = "--port N or CAPSTAN_PORT" if role == "api" else "CAPSTAN_METRICS_PORT"
    return Check(name, "warn", f"taken by another program ({role})", f"pick another with {setting}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
