"""Traffic through the native stack's API and gateway, so every core panel has data.

    eval "$(scripts/stack env)"; .venv/bin/python -m tests.stack.traffic --seconds 300

One round: documents created, read twice (cache miss, then hit) through the API and once
through the gateway, listed, patched and deleted; searches; a text.summarize task waited for;
a 404, a 401 and a 422. Used by tests/stack and to render the dashboard previews.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import httpx

TERMINAL = {"succeeded", "failed", "cancelled", "dead"}
WORDS = [
    "harbor",
    "capstan",
    "anchor",
    "rope",
    "winch",
    "sail",
    "deck",
    "mast",
    "keel",
    "rudder",
    "tide",
    "current",
]


def one_round(api: httpx.Client, gateway: httpx.Client | None, docs: int = 5) -> list[str]:
    """Drive every API route family once; returns the finished tasks' ids."""
    tag = uuid.uuid4().hex[:6]
    ids = []
    for i in range(docs):
        body = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(30))
        r = api.post(
            "/v1/documents",
            json={"title": f"{WORDS[i % len(WORDS)]} {tag}", "body": body, "tags": ["stack", tag]},
        )
        r.raise_for_status()
        ids.append(r.json()["id"])
    for doc_id in ids:
        for _ in range(2):  # miss, then hit
            api.get(f"/v1/documents/{doc_id}").raise_for_status()
        if gateway is not None:
            gateway.get(f"/v1/documents/{doc_id}").raise_for_status()
    api.get("/v1/documents", params={"tag": tag, "limit": 10}).raise_for_status()
    api.patch(f"/v1/documents/{ids[0]}", json={"title": f"patched {tag}"}).raise_for_status()
    api.delete(f"/v1/documents/{ids[-1]}").raise_for_status()
    for q in ("capstan", "anchor rope", tag):
        api.get("/v1/search", params={"q": q}).raise_for_status()
    # Rates need a counter to move between two scrapes: search again after one interval.
    time.sleep(6)
    for q in ("capstan", tag):
        api.get("/v1/search", params={"q": q}).raise_for_status()
    assert api.get(f"/v1/documents/{uuid.uuid4()}").status_code == 404
    assert api.post("/v1/documents", json={"body": 5}).status_code == 422
    assert api.get("/v1/documents", headers={"Authorization": ""}).status_code == 401
    if gateway is not None:
        realtime(api, gateway, tag)
    r = api.post(
        "/v1/tasks", json={"type": "text.summarize", "input": {"text": " ".join(WORDS * 20)}}
    )
    r.raise_for_status()
    task_id = r.json()["id"]
    deadline = time.monotonic() + 30
    while True:
        state = api.get(f"/v1/tasks/{task_id}").json()["status"]
        if state in TERMINAL:
            assert state == "succeeded", state
            return [task_id]
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {state} after 30 s")
        time.sleep(0.2)


def realtime(api: httpx.Client, gateway: httpx.Client, tag: str) -> None:
    """An SSE client of the gateway receives the event of a document written through the API."""
    with gateway.stream("GET", "/v1/stream", params={"types": "document.*"}) as stream:
        assert stream.status_code == 200, stream.read()
        api.post(
            "/v1/documents", json={"title": f"live {tag}", "body": "pushed"}
        ).raise_for_status()
        for line in stream.iter_lines():
            if line.startswith("data:") and "capstan.document.created" in line:
                return  # (the first data line is the `ready` event)


def clients(
    api_url: str, key: str, gateway_url: str | None
) -> tuple[httpx.Client, httpx.Client | None]:
    headers = {"Authorization": f"Bearer {key}"}
    api = httpx.Client(base_url=api_url, headers=headers, timeout=30)
    gw = httpx.Client(base_url=gateway_url, headers=headers, timeout=30) if gateway_url else None
    return api, gw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between rounds")
    args = ap.parse_args()
    api, gw = clients(
        os.environ["CAPSTAN_STACK_API_URL"],
        os.environ["CAPSTAN_STACK_API_KEY"],
        os.environ.get("CAPSTAN_STACK_GATEWAY_URL"),
    )
    end = time.monotonic() + args.seconds
    rounds = failed = 0
    while time.monotonic() < end:
        try:
            one_round(api, gw)
            rounds += 1
        except (httpx.HTTPError, AssertionError) as exc:  # e.g. a server restarted meanwhile
            failed += 1
            print(f"round failed: {exc!r}", flush=True)
        time.sleep(args.pause)
    print(f"{rounds} rounds, {failed} failed")


if __name__ == "__main__":
    main()
