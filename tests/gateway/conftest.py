"""The Python stack in-process (API + relay + subscribers on PostgreSQL, Redis and RabbitMQ) and
the Node.js gateway (`node gateway/dist/server.js`) beside it on the same servers and namespace.

The gateway must be built first: `(cd gateway && npm ci && npm run build)`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REQUIRE, Api, Stack, free_port, stack_settings, start_stack, stop_stack

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
SERVER = GATEWAY / "dist" / "server.js"


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    def ws_url(self, path: str = "/v1/ws") -> str:
        return self.url.replace("http://", "ws://") + path


def _need_gateway() -> str:
    node = shutil.which("node")
    if node is None or not SERVER.exists():
        message = f"the gateway is not built: run (cd {GATEWAY} && npm ci && npm run build)"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message)
    return node


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return log.read_text()[-2000:]


async def start_gateway(stack: Stack | Api, log: Path, **extra: str) -> Gateway:
    node = _need_gateway()
    s = stack.container.settings
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CAPSTAN_DATABASE_URL": s.database_url,
        "CAPSTAN_CACHE_URL": s.cache_url,
        "CAPSTAN_BROKER_URL": s.broker_url,
        "CAPSTAN_BROKER_NAMESPACE": s.broker_namespace,
        "CAPSTAN_CACHE_TTL_SECONDS": str(s.cache_ttl_seconds),
        "CAPSTAN_RATE_LIMIT_PER_MINUTE": str(s.rate_limit_per_minute),
        "CAPSTAN_RATE_LIMIT_BURST": str(s.rate_limit_burst),
        "CAPSTAN_AUTH_FAILURES_PER_MINUTE": str(s.auth_failures_per_minute),
        "CAPSTAN_AUTH_FAILURES_BURST": str(s.auth_failures_burst),
        "CAPSTAN_GATEWAY_PORT": str(port),
        "CAPSTAN_GATEWAY_MAX_MESSAGE_BYTES": "4096",
        "CAPSTAN_LOG_LEVEL": "WARNING",
        **extra,
    }
    proc = _spawn([node, str(SERVER)], env, log)
    gateway = Gateway(f"http://127.0.0.1:{port}", proc, env, log)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    async with httpx.AsyncClient() as http:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the gateway exited: {_tail(log)}")
            try:
                if (await http.get(gateway.url + "/readyz")).status_code == 200:
                    return gateway
            except httpx.TransportError:
                pass
            if loop.time() > deadline:
                raise AssertionError(f"the gateway did not become ready: {_tail(log)}")
            await asyncio.sleep(0.1)


async def stop_gateway(gateway: Gateway) -> None:
    if gateway.proc.poll() is None:
        gateway.proc.terminate()
        try:
            await asyncio.to_thread(gateway.proc.wait, 15)
        except subprocess.TimeoutExpired:
            gateway.proc.kill()
            await asyncio.to_thread(gateway.proc.wait)


@dataclass
class Both:
    stack: Stack
    gateway: Gateway


@pytest.fixture
async def both(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Both]:
    """The Python stack (production backends) and a gateway process on the same namespace."""
    _need_gateway()
    stack = await start_stack(stack_settings("production", request, tmp_path))
    try:
        gateway = await start_gateway(stack, tmp_path / "gateway.log")
    except BaseException:
        await stop_stack(stack)
        raise
    yield Both(stack, gateway)
    await stop_gateway(gateway)
    await stop_stack(stack)


class SseClient:
    """Reads Server-Sent Events frames from a streaming httpx response, with timeouts."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 60.0) -> dict[str, str]:
        # One deadline for the frame: heartbeat comments must not extend the wait forever.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        frame: dict[str, str] = {}
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            line = await asyncio.wait_for(self._lines.__anext__(), remaining)
            if line == "":
                if "data" in frame or "event" in frame:
                    return frame
                frame = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            frame[name] = value.removeprefix(" ")

    async def event(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next CloudEvent (skipping `ready`), with its SSE id checked against its seq."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.next(max(deadline - loop.time(), 0.001))
            if frame.get("event") in (None, "message"):
                envelope: dict[str, Any] = json.loads(frame["data"])
                assert frame["id"] == str(envelope["seq"])
                return envelope
