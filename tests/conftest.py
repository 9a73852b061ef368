"""Shared fixtures: real-service URLs, a migrated test database, tenants and API clients.

Real-service tests are marked (postgres, redis, rabbitmq, elasticsearch). On a laptop without
a server they skip with the reason; with CAPSTAN_REQUIRE_SERVICES=1 (set by .ci/run) a missing
server fails the test instead, and any skip at all fails the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import make_url

from capstan.api.app import create_app
from capstan.container import Container, build_container
from capstan.db.engine import create_engine
from capstan.db.migrate import upgrade
from capstan.db.schema import ApiKey
from capstan.settings import Settings
from capstan.tenants.service import create_tenant

T = TypeVar("T")

# CI (.ci/run, or any CI=true runner): a missing server or binary fails, never skips.
REQUIRE = os.environ.get("CAPSTAN_REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"

SERVICE_ENV = {
    "postgres": "CAPSTAN_TEST_DATABASE_URL",
    "redis": "CAPSTAN_TEST_REDIS_URL",
    "rabbitmq": "CAPSTAN_TEST_AMQP_URL",
    "elasticsearch": "CAPSTAN_TEST_ELASTICSEARCH_URL",
}


def service_url(name: str) -> str:
    """The URL of a real server from the environment, or skip (fail under CI)."""
    var = SERVICE_ENV[name]
    url = os.environ.get(var)
    if not url:
        message = f"{name} is not configured: set {var} (scripts/services env prints it)"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    return url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if REQUIRE and skipped:
        reporter.write_line(
            f"CAPSTAN_REQUIRE_SERVICES=1 and {skipped} test(s) were skipped: failing the run",
            red=True,
        )
        session.exitstatus = 1


# --- PostgreSQL: one migrated database per test run -------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated database on the test server, dropped at the end of the run."""
    base = service_url("postgres")
    name = f"capstan_test_{uuid.uuid4().hex[:10]}"
    admin = make_url(base)
    run_async(_admin_sql(base, f'CREATE DATABASE "{name}"'))
    url = admin.set(database=name).render_as_string(hide_password=False)
    run_async(upgrade(url))
    yield url
    run_async(_admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def fresh_postgres_url() -> AsyncIterator[str]:
    """A migrated database of this test alone (no rows, no statistics yet), dropped after."""
    base = service_url("postgres")
    name = f"capstan_fresh_{uuid.uuid4().hex[:10]}"
    await _admin_sql(base, f'CREATE DATABASE "{name}"')
    try:
        url = make_url(base).set(database=name).render_as_string(hide_password=False)
        await upgrade(url)
        yield url
    finally:
        await _admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty, unmigrated database of this test: a SQLite file, or a database on
    the PostgreSQL test server dropped afterwards (migration tests step through revisions)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    base = service_url("postgres")
    name = f"capstan_m_{uuid.uuid4().hex[:8]}"
    await _admin_sql(base, f'CREATE DATABASE "{name}"')
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    await _admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin_sql(url: str, sql: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return service_url("redis")


# --- Settings for each mode ----------------------------------------------------------------


# Tests hammer one key; the rate-limit test sets its own low limits.
UNLIMITED = {
    "rate_limit_per_minute": 1_000_000,
    "rate_limit_burst": 100_000,
    # Every test client is 127.0.0.1 and production tests share one Redis: the auth-failure
    # test uses its own limits and address.
    "auth_failures_per_minute": 1_000_000,
    "auth_failures_burst": 100_000,
    "log_json": False,
    # Only the tests about embeddings turn them on (tests/search/test_semantic.py): elsewhere
    # every write would add an embedding task, and a text search would turn hybrid once the
    # worker had embedded the tenant's documents.
    "embeddings_enabled": False,
}


def embedded_settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", **UNLIMITED)  # type: ignore[arg-type]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def production_settings(postgres_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=postgres_url,
        cache_url=redis_url,
        **UNLIMITED,  # type: ignore[arg-type]
    )


# --- Running apps --------------------------------------------------------------------------


@dataclass
class Tenant:
    id: str
    key: str


@dataclass
class Api:
    """An API instance under test: its container and a client factory."""

    container: Container
    app_: object

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app_),  # type: ignore[arg-type]
            base_url="http://capstan.test",
            headers=headers,
        )

    async def tenant(self, name: str | None = None, *, admin: bool = False) -> Tenant:
        """A new tenant; with `admin`, its key has the admin (operator) scope."""
        async with self.container.db.begin() as session:
            created = await create_tenant(session, name or f"t-{uuid.uuid4().hex[:12]}")
            if admin:
                await session.execute(
                    update(ApiKey).where(ApiKey.tenant_id == created.tenant_id).values(admin=True)
                )
        return Tenant(created.tenant_id, created.api_key)


async def start_api(settings: Settings) -> Api:
    await upgrade(settings.database_url)
    return await start_api_unmigrated(settings)


async def start_api_unmigrated(settings: Settings) -> Api:
    container = build_container(settings)
    await container.start()
    return Api(container, create_app(settings, container))


@pytest.fixture(
    params=["embedded", pytest.param("production", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    """The API in each mode: embedded (SQLite + memory) and production (PostgreSQL + Redis)."""
    if request.param == "embedded":
        settings = embedded_settings(tmp_path)
    else:
        settings = production_settings(
            request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url"), tmp_path
        )
    instance = await start_api(settings)
    yield instance
    await instance.container.close()


# --- A private redis-server the test may stop and start ------------------------------------


def free_port() -> int:
    """A free port outside the ephemeral range (capstan.localcluster.free_port says why)."""
    from capstan.localcluster import free_port as outside_ephemeral_range

    return outside_ephemeral_range()


class RedisProcess:
    """A redis-server owned by one test, so stopping it disturbs no other test."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (scripts/services up installs it)"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    server = RedisProcess(binary, tmp_path)
    server.start()
    yield server
    server.stop()


# --- The event flow: API + relay + subscribers in one process ------------------------------


@dataclass
class Stack:
    """An API with its relay and subscribers running, on an isolated broker namespace."""

    api: Api
    background: Any  # capstan.roles.Background

    @property
    def container(self) -> Container:
        return self.api.container

    async def until(self, condition: Any, timeout: float = 60.0, what: str = "condition") -> None:
        """Poll an async condition, bounded; fails the test with `what` on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await condition():
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)


EVENT_TEST_SETTINGS = {
    "event_retry_delays_ms": [50, 200],
    "event_max_attempts": 3,
    "outbox_poll_seconds": 0.2,
    "tasks_enable_test_handlers": True,
    "task_retry_base_seconds": 0.1,
    "task_poll_seconds": 0.1,
    "worker_heartbeat_seconds": 0.2,
    # Short enough for the kill -9 test to see a dead worker re-queued soon, long enough that
    # a busy CI machine stalling the loop for a second (1.5 s did, once) reaps no live worker.
    "worker_heartbeat_ttl_seconds": 5.0,
    "worker_shutdown_grace_seconds": 1.0,
    "webhook_allow_private": True,
}


def stack_settings(mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    if mode == "embedded":
        base = embedded_settings(tmp_path)
    else:
        base = production_settings(
            request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url"), tmp_path
        ).model_copy(update={"broker_url": service_url("rabbitmq")})
    return base.model_copy(update={"broker_namespace": namespace, **EVENT_TEST_SETTINGS})


async def start_stack(
    settings: Settings, subscribers: list[str] | None = None, *, worker: bool = True
) -> Stack:
    from capstan.composition import build_background

    api = await start_api(settings)
    background = build_background(
        api.container, relay=True, subscribers=subscribers or ["all"], worker=worker
    )
    await background.start()
    return Stack(api, background)


async def stop_stack(stack: Stack) -> None:
    await stack.background.stop()
    settings = stack.container.settings
    await stack.container.close()
    if settings.broker_url.startswith("amqp"):
        await delete_namespace(settings.broker_url, settings.broker_namespace)


async def delete_namespace(url: str, namespace: str) -> None:
    """Remove a test namespace's queues and exchanges from the shared RabbitMQ (left behind,
    durable queues pile up: thousands slow the node's boot and exhaust its file handles)."""
    from capstan.broker.namespaces import remove_namespace

    left = await remove_namespace(url, namespace)
    assert not left, f"broker names left in test namespace {namespace}: {left}"


@pytest.fixture(
    params=[
        "embedded",
        pytest.param(
            "production", marks=[pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]
        ),
    ]
)
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """API + relay + every subscriber: embedded, and on PostgreSQL, Redis and RabbitMQ."""
    running = await start_stack(stack_settings(request.param, request, tmp_path))
    yield running
    await stop_stack(running)
