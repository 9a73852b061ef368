"""The Python API and the Node.js gateway together, on real PostgreSQL, Redis and RabbitMQ:
realtime push and resume, auth, and bad input (the shared cache contract and byte-equal reads:
test_document_bytes.py).

A task's completion pushed to clients waits for the tasks issue's `task.succeeded` events to
reach the audit log; the gateway forwards every audited type (patterns `task.*`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import stack_settings, start_stack, stop_stack
from tests.gateway.conftest import Both, SseClient, start_gateway, stop_gateway

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def sse(url: str, key: str, **params: Any) -> AsyncIterator[SseClient]:
    headers = auth(key)
    if "last_event_id" in params:
        headers["Last-Event-ID"] = str(params.pop("last_event_id"))
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as http,
        http.stream("GET", url + "/v1/stream", params=params, headers=headers) as r,
    ):
        assert r.status_code == 200, await r.aread()
        yield SseClient(r)


async def ws_subscribe(
    url: str, key: str, types: list[str], after: int | None = None
) -> tuple[ClientConnection, dict[str, Any], list[dict[str, Any]]]:
    """Connect, subscribe; returns the connection, the `subscribed` message and replayed events."""
    ws = await connect(url, additional_headers=auth(key))
    hello = json.loads(await ws.recv())
    assert hello["op"] == "hello"
    message: dict[str, Any] = {"op": "subscribe", "types": types}
    if after is not None:
        message["after"] = after
    await ws.send(json.dumps(message))
    replayed: list[dict[str, Any]] = []
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if msg.get("op") == "subscribed":
            return ws, msg, replayed
        assert "op" not in msg, msg
        replayed.append(msg)


async def ws_event(ws: ClientConnection, timeout: float = 60.0) -> dict[str, Any]:
    while True:
        msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg.get("op") in ("heartbeat", "pong"):
            continue
        return msg


async def test_a_document_written_through_python_reaches_ws_and_sse_of_its_tenant_only(
    both: Both,
) -> None:
    api, gw = both.stack.api, both.gateway
    a, b = await api.tenant(), await api.tenant()
    ws_a, _, _ = await ws_subscribe(gw.ws_url(), a.key, ["document.*"])
    ws_b, _, _ = await ws_subscribe(gw.ws_url(), b.key, ["document.*", "task.*"])
    async with sse(gw.url, a.key, types="document.*,task.*") as stream:
        ready = await stream.next()
        assert ready["event"] == "ready"
        async with api.client(a.key) as http:
            doc = (await http.post("/v1/documents", json={"body": "pushed"})).json()
        pushed_ws = await ws_event(ws_a)
        pushed_sse = await stream.event()
        for event in (pushed_ws, pushed_sse):
            assert event["type"] == "capstan.document.created"
            assert event["specversion"] == "1.0"
            assert event["tenantid"] == a.id
            assert event["data"]["id"] == doc["id"]
            assert isinstance(event["seq"], int)
        assert pushed_ws["seq"] == pushed_sse["seq"]
        # Tenant b's connection works and sees only its own tenant's write.
        async with api.client(b.key) as http:
            own = (await http.post("/v1/documents", json={"body": "b's"})).json()
        got_b = await ws_event(ws_b)
        assert got_b["data"]["id"] == own["id"] and got_b["tenantid"] == b.id
    with pytest.raises(TimeoutError):
        await ws_event(ws_b, timeout=1.0)
    await ws_a.close()
    await ws_b.close()


async def audited(http: httpx.AsyncClient, doc_id: str, version: int) -> bool:
    """Whether the audit log (the replay source) already holds `version` of the document."""
    page = (
        await http.get("/v1/events", params={"subject": f"documents/{doc_id}", "limit": 500})
    ).json()
    return any(item["event"]["data"].get("version") == version for item in page["items"])


async def test_resume_replays_exactly_the_missed_events_in_order_then_live(both: Both) -> None:
    """The missed events are in the audit log before the client comes back: they are replayed
    (counted in `ready`/`subscribed`), then live events follow, nothing twice."""
    stack, api, gw = both.stack, both.stack.api, both.gateway
    t = await api.tenant()
    async with api.client(t.key) as http:
        async with sse(gw.url, t.key, types="document.*") as stream:
            assert (await stream.next())["event"] == "ready"
            doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
            first = await stream.event()
        last_id = first["seq"]
        # Disconnected: three changes happen and reach the audit log.
        for i in range(2, 5):
            await http.patch(f"/v1/documents/{doc['id']}", json={"body": f"v{i}"})
        await stack.until(lambda: audited(http, doc["id"], 4), what="v4 in the audit log")
        # SSE with Last-Event-ID: exactly versions 2..4, then `ready`, then live.
        async with sse(gw.url, t.key, types="document.*", last_event_id=last_id) as stream:
            frames = [await stream.next() for _ in range(4)]
            missed = [json.loads(f["data"]) for f in frames[:3]]
            assert [e["data"]["version"] for e in missed] == [2, 3, 4]
            seqs = [e["seq"] for e in missed]
            assert seqs == sorted(seqs) and seqs[0] > last_id
            assert [f["id"] for f in frames[:3]] == [str(q) for q in seqs]
            ready = frames[3]
            assert ready["event"] == "ready", ready
            assert json.loads(ready["data"])["replayed"] == 3 and ready["id"] == str(seqs[-1])
            await http.patch(f"/v1/documents/{doc['id']}", json={"body": "v5"})
            live = await stream.event()
            assert live["data"]["version"] == 5
            with pytest.raises(TimeoutError):
                await stream.event(timeout=1.0)  # and nothing twice
        # WebSocket: the same with `after`.
        ws, subscribed, replayed = await ws_subscribe(gw.ws_url(), t.key, ["document.*"], last_id)
        assert [e["data"]["version"] for e in replayed] == [2, 3, 4, 5]
        assert subscribed["replayed"] == 4 and subscribed["position"] == live["seq"]
        await http.patch(f"/v1/documents/{doc['id']}", json={"body": "v6"})
        assert (await ws_event(ws))["data"]["version"] == 6
        with pytest.raises(TimeoutError):
            await ws_event(ws, timeout=1.0)
        await ws.close()


async def test_resume_while_the_missed_events_are_still_in_flight(both: Both) -> None:
    """The client comes back at once, before the audit subscriber has recorded what it missed:
    whether each event is replayed or arrives live, the client gets each one once, in order."""
    api, gw = both.stack.api, both.gateway
    t = await api.tenant()
    async with api.client(t.key) as http:
        async with sse(gw.url, t.key, types="document.*") as stream:
            assert (await stream.next())["event"] == "ready"
            doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
            last_id = (await stream.event())["seq"]
        for i in range(2, 7):
            await http.patch(f"/v1/documents/{doc['id']}", json={"body": f"v{i}"})
        async with sse(gw.url, t.key, types="document.*", last_event_id=last_id) as stream:
            got = [await stream.event() for _ in range(5)]
            assert [e["data"]["version"] for e in got] == [2, 3, 4, 5, 6]
            seqs = [e["seq"] for e in got]
            assert seqs == sorted(set(seqs)) and seqs[0] > last_id
            with pytest.raises(TimeoutError):
                await stream.event(timeout=1.0)


async def test_the_same_credentials_work_on_both_services(both: Both) -> None:
    api, gw = both.stack.api, both.gateway
    t = await api.tenant()
    async with api.client(t.key) as py, httpx.AsyncClient(base_url=gw.url) as node:
        doc = (await py.post("/v1/documents", json={"body": "x"})).json()
        session = (await py.post("/v1/sessions")).json()
        token = session["token"]
        assert (
            await node.get(f"/v1/documents/{doc['id']}", headers=auth(token))
        ).status_code == 200
        async with api.client(token) as py_session:
            await py_session.delete("/v1/sessions/current")
        revoked = await node.get(f"/v1/documents/{doc['id']}", headers=auth(token))
        assert revoked.status_code == 401
        assert revoked.headers["www-authenticate"] == 'Bearer realm="capstan"'
        missing = await node.get(f"/v1/documents/{doc['id']}")
        assert missing.status_code == 401
        assert missing.json()["type"] == "https://capstan.dev/problems/unauthorized"


async def test_bad_input_gets_clear_errors(both: Both) -> None:
    api, gw = both.stack.api, both.gateway
    t = await api.tenant()
    async with httpx.AsyncClient(base_url=gw.url, headers=auth(t.key)) as node:
        for params, headers, field in [
            ({"types": "documnet.*"}, {}, "types"),
            ({"types": "document.cre*"}, {}, "types"),
            ({"after": "yesterday"}, {}, "after"),
            ({}, {"Last-Event-ID": "-1"}, "Last-Event-ID"),
            ({"after": "99999999999"}, {}, "after"),
        ]:
            r = await node.get("/v1/stream", params=params, headers=headers)
            assert r.status_code == 422, (params, r.text)
            problem = r.json()
            assert problem["field"] == field and problem["detail"]
        r = await node.get("/v1/stream", headers={"Authorization": ""})
        assert r.status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        await connect(gw.ws_url())
    assert refused.value.response.status_code == 401
    ws = await connect(gw.ws_url(), additional_headers=auth(t.key))
    await ws.recv()  # hello
    for message, code in [
        ({"op": "subscribe", "types": ["nothing.*"]}, "invalid-pattern"),
        ({"op": "subscribe", "types": "document.*", "after": -4}, "invalid-cursor"),
        ({"op": "dance"}, "unknown-op"),
    ]:
        await ws.send(json.dumps(message))
        answer = json.loads(await ws.recv())
        assert answer["op"] == "error" and answer["code"] == code, answer
    await ws.send(json.dumps({"op": "ping", "pad": "x" * 10_000}))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


@pytest.mark.services
async def test_rabbitmq_restarted_the_gateway_reconnects_and_clients_miss_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    stack = await start_stack(stack_settings("production", request, tmp_path))
    gw = await start_gateway(stack, tmp_path / "gateway.log")
    try:
        t = await stack.api.tenant()
        ws, _, _ = await ws_subscribe(gw.ws_url(), t.key, ["document.*"])
        async with stack.api.client(t.key) as http:
            doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
            assert (await ws_event(ws))["data"]["version"] == 1
            await asyncio.to_thread(subprocess.run, [str(SERVICES), "down", "rabbitmq"], check=True)
            for i in range(2, 5):  # committed to the outbox while the broker is down
                assert (
                    await http.patch(f"/v1/documents/{doc['id']}", json={"body": f"v{i}"})
                ).status_code == 200
            await asyncio.to_thread(subprocess.run, [str(SERVICES), "up", "rabbitmq"], check=True)
            versions = [(await ws_event(ws, timeout=120))["data"]["version"] for _ in range(3)]
            assert versions == [2, 3, 4]
            await http.patch(f"/v1/documents/{doc['id']}", json={"body": "v5"})
            assert (await ws_event(ws, timeout=60))["data"]["version"] == 5
            with pytest.raises(TimeoutError):
                await ws_event(ws, timeout=1.0)
        await ws.close()
        async with httpx.AsyncClient() as probe:
            assert (await probe.get(gw.url + "/readyz")).status_code == 200
    finally:
        await asyncio.to_thread(subprocess.run, [str(SERVICES), "up", "rabbitmq"], check=False)
        await stop_gateway(gw)
        await stop_stack(stack)


async def test_a_task_completion_reaches_ws_and_sse_of_its_tenant_only(both: Both) -> None:
    api, gw = both.stack.api, both.gateway
    a, b = await api.tenant(), await api.tenant()
    ws_a, _, _ = await ws_subscribe(gw.ws_url(), a.key, ["task.succeeded"])
    ws_b, _, _ = await ws_subscribe(gw.ws_url(), b.key, ["task.*"])
    async with sse(gw.url, a.key, types="task.succeeded") as stream:
        assert (await stream.next())["event"] == "ready"
        async with api.client(a.key) as http:
            task = (
                await http.post(
                    "/v1/tasks", json={"type": "text.language", "input": {"text": "Bonjour à tous"}}
                )
            ).json()
        pushed_ws = await ws_event(ws_a)
        pushed_sse = await stream.event()
    for event in (pushed_ws, pushed_sse):
        assert event["type"] == "capstan.task.succeeded"
        assert event["data"]["id"] == task["id"]
        assert event["data"]["result"]["language"] == "fr"
    with pytest.raises(TimeoutError):
        await ws_event(ws_b, timeout=1.0)
    await ws_a.close()
    await ws_b.close()
