"""Task progress as ephemeral signals, end to end: a Python worker publishes each tick on Redis
Pub/Sub, the Node.js gateway pushes it to that tenant's WebSocket and SSE clients, without seq,
beside the durable `task.*` events (which keep theirs)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tests.gateway.conftest import Both, SseClient
from tests.gateway.test_cross_service import sse, ws_event, ws_subscribe

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]

LONG = {"type": "test.sleep", "input": {"seconds": 600}}  # runs until cancelled


async def signals_of(ws: ClientConnection, task_id: str, wanted: int) -> list[dict[str, Any]]:
    """Read the connection until `wanted` signals of the task came; every message must be of
    the connection's tenant (checked by the caller) and every signal carries no seq."""
    got: list[dict[str, Any]] = []
    while len(got) < wanted:
        msg = await ws_event(ws)
        if msg.get("ephemeral"):
            assert "seq" not in msg
            got.append(msg)
        else:
            assert isinstance(msg["seq"], int)  # a durable task.* event: queued, started
        assert msg["data"]["id"] == task_id, msg
    return got


async def sse_signal(stream: SseClient) -> dict[str, Any]:
    while True:
        frame = await stream.next()
        if frame.get("event") == "signal":
            assert "id" not in frame  # the resume position (Last-Event-ID) stays the last seq
            return json.loads(frame["data"])  # type: ignore[no-any-return]


async def test_progress_signals_reach_ws_and_sse_clients_of_their_tenant_only(both: Both) -> None:
    api, gw = both.stack.api, both.gateway
    a, b = await api.tenant(), await api.tenant()
    ws_a, _, _ = await ws_subscribe(gw.ws_url(), a.key, ["task.*"])
    ws_b, _, _ = await ws_subscribe(gw.ws_url(), b.key, ["task.*"])
    async with (
        sse(gw.url, a.key, types="task.progress") as stream,
        api.client(a.key) as http_a,
        api.client(b.key) as http_b,
    ):
        assert (await stream.next())["event"] == "ready"
        # Given a long task of tenant a reporting progress,
        task_a = (await http_a.post("/v1/tasks", json=LONG)).json()
        # then a's WebSocket gets its ticks, marked ephemeral, with no seq,
        ticks = await signals_of(ws_a, task_a["id"], 2)
        for tick in ticks:
            assert tick["type"] == "capstan.task.progress" and tick["tenantid"] == a.id
            assert tick["subject"] == f"tasks/{task_a['id']}"
            assert tick["data"]["message"] == "sleeping"
            assert 0 <= tick["data"]["progress"] < 1
        assert ticks[0]["data"]["progress"] <= ticks[1]["data"]["progress"]
        # and so does a's SSE stream, as `event: signal` frames.
        pushed = await sse_signal(stream)
        assert (pushed["tenantid"], pushed["data"]["id"]) == (a.id, task_a["id"])

        # Tenant b's connection saw none of a's ticks: the first thing it gets is its own.
        task_b = (await http_b.post("/v1/tasks", json=LONG)).json()
        first_b = await ws_event(ws_b)
        assert (first_b["tenantid"], first_b["data"]["id"]) == (b.id, task_b["id"])
        own = await signals_of(ws_b, task_b["id"], 1)
        assert own[0]["tenantid"] == b.id

        # A client that reconnects finds the latest progress on the task (signals are not
        # replayed): the row is written at most once a second, with a tick that was signalled.
        async def on_the_row() -> bool:
            return bool((await http_a.get(task_a["url"])).json()["progress"] > 0)

        await both.stack.until(on_the_row, what="a's progress on its task row")
        for http, task in ((http_a, task_a), (http_b, task_b)):
            assert (await http.post(f"{task['url']}/cancel")).status_code == 202
    await ws_a.close()
    await ws_b.close()
