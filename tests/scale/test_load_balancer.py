"""HAProxy (deploy/native/haproxy.cfg.tmpl) in front of three `capstan api` processes: kill -9
one under load and clients see no failed read, and every write retried with its idempotency
key is applied exactly once."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from string import Template

import httpx
import pytest
from sqlalchemy import text

from capstan.db.engine import create_engine, sessionmaker
from capstan.tenants.service import create_tenant
from tests.conftest import free_port
from tests.servers import missing, wait_port

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "native" / "haproxy.cfg.tmpl"

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def render_haproxy(api_ports: list[int], port: int, stats_port: int) -> str:
    servers = "\n".join(f"    server api-{i + 1} 127.0.0.1:{p}" for i, p in enumerate(api_ports))
    return Template(TEMPLATE.read_text()).substitute(
        bind="127.0.0.1",
        api_port=port,
        gateway_port=free_port(),
        stats_port=stats_port,
        check_interval="300ms",
        api_servers=servers,
        gateway_servers="",
    )


class Cluster:
    """Three API processes and HAProxy, each its own process group."""

    def __init__(self, tmp_path: Path, postgres_url: str, redis_url: str) -> None:
        if shutil.which("haproxy") is None:
            missing("haproxy is not installed (Debian haproxy; scripts/services installs it)")
        self.tmp = tmp_path
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "CAPSTAN_DATABASE_URL": postgres_url,
            "CAPSTAN_CACHE_URL": redis_url,
            "CAPSTAN_DATA_DIR": str(tmp_path / "data"),
            "CAPSTAN_RATE_LIMIT_PER_MINUTE": "1000000",
            "CAPSTAN_RATE_LIMIT_BURST": "100000",
            "CAPSTAN_TASKS_ENABLE_TEST_HANDLERS": "true",
            "CAPSTAN_LOG_LEVEL": "WARNING",
        }
        self.api_ports = [free_port() for _ in range(3)]
        self.port, self.stats_port = free_port(), free_port()
        self.apis: list[subprocess.Popen[bytes]] = []
        self.haproxy: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        for i, port in enumerate(self.api_ports):
            with (self.tmp / f"api-{i + 1}.log").open("wb") as log:
                self.apis.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "capstan.cli.main", "api", "--port", str(port)],
                        env=self.env,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                )
        for port in self.api_ports:
            wait_port(port, timeout=60, what="capstan api")
        config = self.tmp / "haproxy.cfg"
        config.write_text(render_haproxy(self.api_ports, self.port, self.stats_port))
        with (self.tmp / "haproxy.log").open("wb") as log:
            self.haproxy = subprocess.Popen(
                ["haproxy", "-db", "-f", str(config)],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_port(self.port, what="haproxy")

    def servers_up(self) -> dict[str, str]:
        """Each API server's state as HAProxy's health checks see it."""
        csv = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv").text
        rows = [line.split(",") for line in csv.splitlines() if line.startswith("api,api-")]
        return {row[1]: row[17] for row in rows}

    def kill(self, index: int) -> None:
        """kill -9 of one API instance."""
        os.killpg(self.apis[index].pid, signal.SIGKILL)
        self.apis[index].wait()

    def stop(self) -> None:
        for proc in [*self.apis, self.haproxy]:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Cluster]:
    running = Cluster(tmp_path, postgres_url, redis_url)
    try:
        running.start()
        yield running
    finally:
        running.stop()


async def new_tenant(postgres_url: str) -> str:
    engine = create_engine(postgres_url, pool_size=1)
    try:
        async with sessionmaker(engine).begin() as session:
            created = await create_tenant(session, f"lb-{uuid.uuid4().hex[:10]}")
        return created.api_key
    finally:
        await engine.dispose()


async def until(condition: object, what: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Load:
    """Clients reading one document and queueing tasks, each with its own idempotency key."""

    def __init__(self, http: httpx.AsyncClient, doc_url: str) -> None:
        self.http = http
        self.doc_url = doc_url
        self.reads = 0
        self.failed_reads: list[str] = []
        self.tasks: dict[str, set[str]] = {}  # idempotency key -> task ids answered
        self.write_retries = 0
        self.stopping = False

    async def client(self, index: int) -> None:
        n = 0
        while not self.stopping:
            n += 1
            try:
                answer = await self.http.get(self.doc_url)
                ok = answer.status_code == 200
                detail = f"{answer.status_code} {answer.text[:200]}"
            except httpx.TransportError as exc:
                ok, detail = False, repr(exc)
            self.reads += 1
            if not ok:
                self.failed_reads.append(detail)
            await self.queue_task(f"c{index}-{n}")

    async def queue_task(self, key: str) -> None:
        body = {"type": "test.noop", "input": {}, "idempotency_key": key}
        for _ in range(20):  # a write in flight on the killed instance fails: send it again
            try:
                answer = await self.http.post("/v1/tasks", json=body)
            except httpx.TransportError:
                self.write_retries += 1
                continue
            if answer.status_code in (200, 201, 202):
                self.tasks.setdefault(key, set()).add(answer.json()["id"])
                return
            assert answer.status_code in (502, 503), answer.text
            self.write_retries += 1
            await asyncio.sleep(0.1)
        raise AssertionError(f"task {key} was never acknowledged")


async def test_killing_one_api_instance_fails_no_read_and_loses_no_write(
    cluster: Cluster, postgres_url: str
) -> None:
    key = await new_tenant(postgres_url)
    await until(lambda: set(cluster.servers_up().values()) == {"UP"}, "all three APIs up")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=cluster.url, headers=headers, timeout=30) as http:
        doc = (await http.post("/v1/documents", json={"body": "behind haproxy"})).json()
        load = Load(http, f"/v1/documents/{doc['id']}")
        clients = [asyncio.create_task(load.client(i)) for i in range(8)]
        try:
            # Given traffic through HAProxy
            await until(lambda: load.reads >= 100, "100 reads")
            # When one instance is killed (kill -9) mid-traffic
            cluster.kill(0)
            killed_at = load.reads
            # Then traffic goes on through the others, without one failed read
            await until(lambda: cluster.servers_up()["api-1"].startswith("DOWN"), "api-1 down")
            await until(lambda: load.reads >= killed_at + 200, "200 reads after the kill")
        finally:
            load.stopping = True
            await asyncio.gather(*clients)
    assert load.failed_reads == []
    # And every task was acknowledged once per key, and stored once
    assert all(len(ids) == 1 for ids in load.tasks.values())

    async def stored() -> int:
        engine = create_engine(postgres_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                found = await conn.execute(
                    text("SELECT count(*) FROM tasks WHERE id = ANY(:ids)"),
                    {"ids": [next(iter(ids)) for ids in load.tasks.values()]},
                )
                return int(found.scalar_one())
        finally:
            await engine.dispose()

    assert await stored() == len(load.tasks)
