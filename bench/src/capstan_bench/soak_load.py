"""The steady mixed load of `capstan bench soak`: document creates, reads and updates, task
submissions and search queries through the API at a fixed rate (open loop, bounded pool, stops
at its deadline), and WebSocket clients of the gateway counting the events they receive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from capstan_bench.common import BenchError
from capstan_bench.latency import summary_ms
from capstan_bench.soak_stats import op_kind

# One round of the mix: reads dominate, as in a typical application.
MIX = (
    "create", "read", "update", "read", "task", "search",
    "read", "update", "read", "task", "create", "search",
)  # fmt: skip
TASK_TYPE = "text.language"  # a cheap built-in task (langdetect on one sentence)
TASK_TEXT = "Capstan keeps its memory flat while it serves a steady load."
BODY = ("A soak benchmark document: written, read, updated and searched again. " * 3).strip()
WORDS = ("soak", "benchmark", "document", "memory", "steady", "searched")
KEEP_IDS = 500  # documents the reads and updates pick from (the newest, bounded)
REQUEST_TIMEOUT_S = 30.0


@dataclass
class OpStats:
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    ms: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "error_samples": self.error_samples[:5],
            "latency_last_20000": summary_ms(list(self.ms)),
        }


@dataclass
class LoadStats:
    scheduled: int = 0
    skipped_late: int = 0
    by_kind: dict[str, OpStats] = field(default_factory=dict)

    def kind(self, name: str) -> OpStats:
        return self.by_kind.setdefault(name, OpStats())

    @property
    def done(self) -> int:
        return sum(s.ok + s.errors for s in self.by_kind.values())

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.by_kind.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheduled": self.scheduled,
            "done": self.done,
            "errors": self.errors,
            "skipped_late": self.skipped_late,
            "by_kind": {k: v.to_dict() for k, v in sorted(self.by_kind.items())},
        }


async def _one(client: Any, kind: str, i: int, ids: deque[str]) -> None:
    """One operation; raises on a non-2xx answer."""
    if kind in ("read", "update") and not ids:
        kind = "create"
    if kind == "create":
        r = await client.post(
            "/v1/documents",
            json={"collection": "soak", "title": f"soak {i}", "body": BODY, "tags": ["soak"]},
        )
        r.raise_for_status()
        ids.append(r.json()["id"])
    elif kind == "read":
        r = await client.get(f"/v1/documents/{ids[i % len(ids)]}")
        r.raise_for_status()
    elif kind == "update":
        r = await client.patch(
            f"/v1/documents/{ids[(i * 7) % len(ids)]}", json={"title": f"soak update {i}"}
        )
        r.raise_for_status()
    elif kind == "task":
        r = await client.post("/v1/tasks", json={"type": TASK_TYPE, "input": {"text": TASK_TEXT}})
        r.raise_for_status()
    elif kind == "search":
        r = await client.get("/v1/search", params={"q": WORDS[i % len(WORDS)], "limit": 10})
        r.raise_for_status()
    else:
        raise ValueError(f"unknown operation {kind!r}")


async def drive(
    api_url: str,
    key: str,
    *,
    rate: float,
    duration_s: float,
    concurrency: int,
    stats: LoadStats,
    on_op: Callable[[], None] = lambda: None,
) -> None:
    """Operation i starts at t0 + i/rate (or when a caller is free after that); nothing starts
    after t0 + duration_s, so the load stops by itself."""
    import httpx

    total = int(rate * duration_s)
    stats.scheduled = total
    ids: deque[str] = deque(maxlen=KEEP_IDS)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05
    deadline = t0 + duration_s
    next_index = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=api_url, headers=headers, timeout=REQUEST_TIMEOUT_S
    ) as client:

        async def caller() -> None:
            nonlocal next_index
            while next_index < total:
                i = next_index
                next_index += 1
                delay = t0 + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                started = loop.time()
                if started > deadline:
                    stats.skipped_late += 1
                    continue
                kind = op_kind(i, MIX)
                s = stats.kind(kind)
                try:
                    await _one(client, kind, i, ids)
                    s.ok += 1
                except Exception as exc:
                    s.errors += 1
                    if len(s.error_samples) < 5:
                        s.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
                s.ms.append((loop.time() - started) * 1000)
                on_op()

        await asyncio.gather(*(caller() for _ in range(concurrency)))


@dataclass
class SocketStats:
    clients: int = 0
    connected: int = 0
    messages: int = 0
    disconnects: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "connected": self.connected,
            "event_messages": self.messages,
            "disconnects": self.disconnects,
            "errors": self.errors[:5],
        }


async def subscribe(gateway_url: str, key: str, stats: SocketStats, timeout_s: float = 30) -> Any:
    """One WebSocket client of the gateway, subscribed to every event type; it counts what it
    receives until the returned connection is closed."""
    try:
        from websockets.asyncio.client import connect
    except ImportError as exc:
        raise BenchError(
            "the soak's WebSocket clients need `websockets`: `.venv/bin/pip install websockets`"
        ) from exc

    ws = await connect(
        gateway_url.replace("http", "ws", 1) + "/v1/ws",
        additional_headers={"Authorization": f"Bearer {key}"},
        open_timeout=timeout_s,
        compression=None,
    )
    async with asyncio.timeout(timeout_s):
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("op") == "hello":
                await ws.send(json.dumps({"op": "subscribe", "types": ["document.*", "task.*"]}))
            elif msg.get("op") == "subscribed":
                break
    stats.connected += 1
    return ws


async def listen(ws: Any, stats: SocketStats) -> None:
    """Count the event messages of one subscribed client until it is closed."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for raw in ws:
            with contextlib.suppress(ValueError, AttributeError):
                if "op" not in json.loads(raw):
                    stats.messages += 1
    except ConnectionClosed as exc:
        stats.disconnects += 1
        if len(stats.errors) < 5:
            stats.errors.append(f"closed: {exc}"[:200])


async def wait_http(url: str, check_alive: Callable[[], None], timeout_s: float = 60) -> None:
    """Until GET `url` answers 200 (e.g. /healthz, /readyz)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise BenchError(f"{url} did not answer 200 within {timeout_s:g}s")
