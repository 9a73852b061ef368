"""Pieces every `capstan bench` command shares: the servers to run against, a scratch
database, free ports, process CPU time, the git commit, and SIGTERM handled like Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
