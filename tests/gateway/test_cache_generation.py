"""Read-your-writes across instances after a Redis outage (issue 14): a write acknowledged by
one API instance while Redis hung is never answered in its old version by another API process
or by the gateway once Redis is back, although the old entry is still in Redis and no cache
subscriber runs to deliver the missed invalidation.

The writer bumps the durable cache generation (capstan.cache.generation); the other instances,
idle through the outage, notice it through their generation poll, and install the database's
generation before they trust Redis again (docs/contracts/cache.md, "Generations").
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest

from capstan.settings import Settings
from tests.conftest import (
    Api,
    RedisProcess,
    Tenant,
    delete_namespace,
    free_port,
    production_settings,
    service_url,
    start_api,
)
from tests.gateway.conftest import Gateway, _spawn, _tail, start_gateway, stop_gateway

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]

POLL = "0.2"


@dataclass
class Instances:
    writer: Api  # API instance A, in this process
    reader: str  # API instance B, a `capstan api` process: its base URL
    gateway: Gateway
    redis: RedisProcess


async def _spawn_api(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CAPSTAN_DATABASE_URL": settings.database_url,
        "CAPSTAN_CACHE_URL": settings.cache_url,
        "CAPSTAN_BROKER_URL": settings.broker_url,
        "CAPSTAN_BROKER_NAMESPACE": settings.broker_namespace,
        "CAPSTAN_DATA_DIR": str(settings.data_dir),
        "CAPSTAN_CACHE_TIMEOUT_SECONDS": str(settings.cache_timeout_seconds),
        "CAPSTAN_CACHE_RETRY_SECONDS": str(settings.cache_retry_seconds),
        "CAPSTAN_CACHE_GENERATION_POLL_SECONDS": POLL,
        "CAPSTAN_RATE_LIMIT_PER_MINUTE": "1000000",
        "CAPSTAN_RATE_LIMIT_BURST": "100000",
        "CAPSTAN_LOG_LEVEL": "WARNING",
    }
    proc = _spawn([sys.executable, "-m", "capstan.cli.main", "api", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    async with httpx.AsyncClient() as http:
        while True:
            assert proc.poll() is None, f"capstan api exited: {_tail(log)}"
            try:
                if (await http.get(url + "/readyz")).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
            assert loop.time() < deadline, f"capstan api did not start: {_tail(log)}"
            await asyncio.sleep(0.1)


@pytest.fixture
async def instances(
    postgres_url: str, redis_process: RedisProcess, tmp_path: Path
) -> AsyncIterator[Instances]:
    settings = production_settings(postgres_url, redis_process.url, tmp_path).model_copy(
        update={
            "broker_url": service_url("rabbitmq"),
            "broker_namespace": f"t{uuid.uuid4().hex[:10]}",
            "cache_timeout_seconds": 0.3,
            "cache_retry_seconds": 0.2,
            "cache_generation_poll_seconds": float(POLL),
        }
    )
    writer = await start_api(settings)
    reader, reader_url = await _spawn_api(settings, tmp_path / "api-b.log")
    try:
        gateway = await start_gateway(
            writer, tmp_path / "gateway.log", CAPSTAN_CACHE_GENERATION_POLL_SECONDS=POLL
        )
        try:
            yield Instances(writer, reader_url, gateway, redis_process)
        finally:
            await stop_gateway(gateway)
    finally:
        reader.terminate()
        await asyncio.to_thread(reader.wait)
        await writer.container.close()
        await delete_namespace(settings.broker_url, settings.broker_namespace)


async def _failed_syncs(http: httpx.AsyncClient) -> float:
    """How often this instance (API or gateway) found Redis unreachable when syncing."""
    text = (await http.get("/metrics")).text
    found = re.search(
        r'^capstan_cache_generation_syncs_total\{cache="documents",outcome="failed"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


async def _until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_an_idle_instance_and_the_gateway_never_serve_a_write_missed_during_an_outage(
    instances: Instances,
) -> None:
    tenant: Tenant = await instances.writer.tenant()
    auth = {"Authorization": f"Bearer {tenant.key}"}
    async with (
        instances.writer.client(tenant.key) as a,
        httpx.AsyncClient(base_url=instances.reader, headers=auth) as b,
        httpx.AsyncClient(base_url=instances.gateway.url, headers=auth) as gw,
    ):
        doc = (await a.post("/v1/documents", json={"body": "v1"})).json()
        url = f"/v1/documents/{doc['id']}"
        assert (await b.get(url)).headers["x-cache"] == "miss"
        for client in (b, gw, a):  # version 1 is cached, and every instance serves it from there
            answer = await client.get(url)
            assert (answer.headers["x-cache"], answer.json()["version"]) == ("hit", 1)

        proc = instances.redis.proc
        assert proc is not None
        before = {b: await _failed_syncs(b), gw: await _failed_syncs(gw)}

        async def noticed(client: httpx.AsyncClient) -> bool:
            return await _failed_syncs(client) > before[client]

        os.kill(proc.pid, signal.SIGSTOP)  # Redis hangs, its entries intact
        try:
            patched = await a.patch(url, json={"body": "v2"})
            assert (patched.status_code, patched.json()["version"]) == (200, 2)
            # B and the gateway get no request meanwhile; their poll finds Redis unreachable.
            await _until(lambda: noticed(b), "API B to notice the outage")
            await _until(lambda: noticed(gw), "the gateway to notice the outage")
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        # Redis is back with version 1 still in it: nobody serves it.
        for _ in range(20):
            for name, client in (("API B", b), ("the gateway", gw), ("API A", a)):
                answer = await client.get(url)
                assert answer.status_code == 200, answer.text
                assert answer.json()["version"] == 2, f"{name} served the pre-write entry"
            await asyncio.sleep(0.02)

        async def hit_v2(client: httpx.AsyncClient) -> bool:
            answer = await client.get(url)
            assert answer.json()["version"] == 2
            return answer.headers["x-cache"] == "hit"

        for client in (b, gw, a):  # and the cache serves again, version 2
            await _until(partial(hit_v2, client), "the cache to serve version 2")


async def test_a_writer_cut_off_from_redis_alone_is_heard_within_the_poll(
    instances: Instances,
) -> None:
    """Another API instance that cannot reach Redis at all writes: its bump reaches the
    instances that can within their generation poll, and they stop serving the old entry."""
    cut_off = await start_api(
        instances.writer.container.settings.model_copy(
            update={"cache_url": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens
        )
    )
    try:
        tenant = await instances.writer.tenant()
        auth = {"Authorization": f"Bearer {tenant.key}"}
        async with (
            instances.writer.client(tenant.key) as a,
            cut_off.client(tenant.key) as c,
            httpx.AsyncClient(base_url=instances.reader, headers=auth) as b,
            httpx.AsyncClient(base_url=instances.gateway.url, headers=auth) as gw,
        ):
            doc = (await a.post("/v1/documents", json={"body": "v1"})).json()
            url = f"/v1/documents/{doc['id']}"
            await b.get(url)
            assert (await gw.get(url)).headers["x-cache"] == "hit"
            assert (await c.patch(url, json={"body": "v2"})).json()["version"] == 2

            async def current(client: httpx.AsyncClient) -> bool:
                return bool((await client.get(url)).json()["version"] == 2)

            for client in (b, gw):
                await _until(partial(current, client), "the bump", timeout=5.0)
                for _ in range(10):
                    assert (await client.get(url)).json()["version"] == 2
    finally:
        await cut_off.container.close()
