"""Pieces every `capstan bench` command shares: the consoles, the servers to run against, a
scratch database, free ports, the git commit, SIGTERM handled like Ctrl-C, the environment of
the processes a run starts, and the clean-up afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from capstan.settings import Settings

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

SERVICES_HINT = "start them with `scripts/services up` (and `eval $(scripts/services env)`)"


class BenchError(Exception):
    """The measurement could not be made; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Backends:
    database_url: str
    cache_url: str
    database_from: str
    cache_from: str


def resolve_backends(env: dict[str, str] | os._Environ[str] = os.environ) -> Backends:
    """The PostgreSQL and Redis URLs: CAPSTAN_DATABASE_URL/CACHE_URL, else the test ones."""
    db_var = next(
        (v for v in ("CAPSTAN_DATABASE_URL", "CAPSTAN_TEST_DATABASE_URL") if env.get(v)), None
    )
    cache_var = next(
        (v for v in ("CAPSTAN_CACHE_URL", "CAPSTAN_TEST_REDIS_URL") if env.get(v)), None
    )
    if db_var is None or cache_var is None:
        missing = " and ".join(
            name
            for name, var in (
                ("CAPSTAN_TEST_DATABASE_URL (or CAPSTAN_DATABASE_URL)", db_var),
                ("CAPSTAN_TEST_REDIS_URL (or CAPSTAN_CACHE_URL)", cache_var),
            )
            if var is None
        )
        raise BenchError(
            f"{missing} not set: the benchmark needs a real PostgreSQL and Redis; {SERVICES_HINT}"
        )
    db_url, cache_url = env[db_var], env[cache_var]
    if not db_url.startswith(("postgresql://", "postgres://")):
        raise BenchError(f"{db_var} must be a postgresql:// URL (got {redact(db_url)})")
    if not cache_url.startswith(("redis://", "rediss://")):
        raise BenchError(f"{cache_var} must be a redis:// URL (got {redact(cache_url)})")
    return Backends(db_url, cache_url, db_var, cache_var)


def redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def check_backends(b: Backends) -> dict[str, str]:
    """Connect to both servers; their versions, or BenchError naming what is unreachable."""
    import redis.asyncio as aioredis
    from sqlalchemy import text

    engine = admin_engine(b.database_url)
    try:
        async with engine.connect() as conn:
            pg_version = str(await conn.scalar(text("SHOW server_version")))
    except Exception as exc:
        raise BenchError(
            f"PostgreSQL at {redact(b.database_url)} ({b.database_from}) is unreachable: "
            f"{exc or type(exc).__name__}; {SERVICES_HINT}"
        ) from exc
    finally:
        await engine.dispose()
    client = aioredis.from_url(b.cache_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        info = await client.info("server")
    except Exception as exc:
        raise BenchError(
            f"Redis at {redact(b.cache_url)} ({b.cache_from}) is unreachable: "
            f"{exc or type(exc).__name__}; {SERVICES_HINT}"
        ) from exc
    finally:
        await client.aclose()
    return {"postgresql": pg_version, "redis": str(info.get("redis_version", "unknown"))}


def admin_engine(url: str) -> AsyncEngine:
    """No pool, autocommit (CREATE/DROP DATABASE cannot run in a transaction), 5 s connect."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from capstan.settings import to_async_url

    return create_async_engine(
        to_async_url(url),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"timeout": 5},
    )


async def admin(url: str, sql: str) -> None:
    from sqlalchemy import text

    engine = admin_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the cleanup below runs for both."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def seed_tenant(database_url: str) -> tuple[str, str, str]:
    """Migrate the scratch database and create a tenant named `bench`: (tenant id, key id, key)."""
    from sqlalchemy import select

    from capstan.db.engine import create_engine, sessionmaker
    from capstan.db.migrate import upgrade
    from capstan.db.schema import ApiKey
    from capstan.tenants.service import create_tenant

    await upgrade(database_url)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with sessionmaker(engine).begin() as session:
            created = await create_tenant(session, "bench")
            key_id = await session.scalar(
                select(ApiKey.id).where(ApiKey.tenant_id == created.tenant_id)
            )
    finally:
        await engine.dispose()
    return created.tenant_id, str(key_id), created.api_key


class ScratchDatabase:
    """A database of the run's own (`capstan_bench_<random>`) on the PostgreSQL server at
    `server_url`: created, migrated with one tenant, and dropped."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"capstan_bench_{secrets.token_hex(4)}"
        self.url = with_database(server_url, self.name)
        self.created = False

    def create(self) -> tuple[str, str, str]:
        """Create, migrate and seed it: (tenant id, key id, key) of its tenant `bench`."""
        err.print(f"scratch database [bold]{self.name}[/bold] on {redact(self.url)}")
        asyncio.run(admin(self.server_url, f'CREATE DATABASE "{self.name}"'))
        self.created = True
        return asyncio.run(seed_tenant(self.url))

    def drop(self, *, retry_s: float = 0.0) -> None:
        """Drop it if it was created, trying again for up to `retry_s`."""
        if not self.created:
            return
        sql = f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'
        if retrying(
            lambda: asyncio.run(admin(self.server_url, sql)),
            f"drop scratch database {self.name}",
            retry_s,
        ):
            err.print(f"dropped scratch database {self.name}")


def retrying(step: Callable[[], None], what: str, retry_s: float) -> bool:
    """Run `step`, again every 2 s while it fails, for up to `retry_s` (0: once); False, and
    `could not <what>` on stderr, if it never succeeded."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            step()
            return True
        except Exception as exc:
            if time.monotonic() >= deadline:
                err.print(f"[red]could not {what}: {exc}[/red]")
                return False
            time.sleep(2)


async def _delete_keys(cache_url: str, patterns: Sequence[str]) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(cache_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        for pattern in patterns:
            keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
            for i in range(0, len(keys), 1000):
                await client.delete(*keys[i : i + 1000])
    finally:
        await client.aclose()


def forget_keys(cache_url: str, patterns: Sequence[str]) -> None:
    """Delete the bench's Redis keys (glob patterns); a warning if Redis does not answer."""
    try:
        asyncio.run(_delete_keys(cache_url, patterns))
    except Exception as exc:
        err.print(f"[yellow]could not remove the bench's Redis keys: {exc}[/yellow]")


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of a process the run starts: this one's with the overrides, and without
    CAPSTAN_SEARCH_URL (the benchmarks run without Elasticsearch)."""
    env = {**os.environ, **overrides}
    env.pop("CAPSTAN_SEARCH_URL", None)
    return env


# The roles a benchmark starts log warnings only: request logging would dominate the CPU.
ROLE_LOG_LEVEL = "WARNING"


def role_overrides(
    database_url: str, cache_url: str, broker_url: str, namespace: str, workdir: Path, **extra: str
) -> dict[str, str]:
    """The settings every role of a run gets: its scratch database, the servers, its own
    broker namespace and data directory, quiet logs; `extra` adds the benchmark's own."""
    return {
        "CAPSTAN_DATABASE_URL": database_url,
        "CAPSTAN_CACHE_URL": cache_url,
        "CAPSTAN_BROKER_URL": broker_url,
        "CAPSTAN_BROKER_NAMESPACE": namespace,
        "CAPSTAN_DATA_DIR": str(workdir / "data"),
        "CAPSTAN_LOG_LEVEL": ROLE_LOG_LEVEL,
        **extra,
    }


def settings_for(overrides: Mapping[str, str]) -> Settings:
    """The Settings a process started with `child_env(overrides)` reads (e.g. which
    subscribers are enabled)."""
    from capstan.settings import Settings

    saved = {k: os.environ.get(k) for k in (*overrides, "CAPSTAN_SEARCH_URL")}
    os.environ.update(overrides)
    os.environ.pop("CAPSTAN_SEARCH_URL", None)
    try:
        return Settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """The bench's loop is the one the roles run on (capstan.eventloop)."""
    from capstan.eventloop import run

    return run(coro)


def remove_tree(path: Path) -> None:
    """The run's working directory (logs, data dir), whatever is in it."""
    shutil.rmtree(path, ignore_errors=True)
