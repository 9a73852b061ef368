"""The rules the Python services and the Node gateway both implement, checked against one set of
vectors (tests/contract/vectors.json) that gateway/src/test/contract.test.ts reads too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.security import HTTPBearer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from starlette.requests import Request

import capstan.cache.redis
from capstan.auth.tokens import api_key_id, bearer_token
from capstan.broker.port import topic_matches
from capstan.cache.port import CacheUnavailable
from capstan.cache.redis import RedisLink
from capstan.documents.router import none_match
from capstan.events.envelope import parse_event
from capstan.events.realtime import batch_message, read_batch
from capstan.webhooks.schemas import check_pattern

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors.json").read_text())


def cases(name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = VECTORS[name]["cases"]
    return found


@pytest.mark.parametrize("case", cases("api_key_id"), ids=repr)
def test_api_key_id(case: dict[str, Any]) -> None:
    assert api_key_id(case["token"]) == case["key_id"]


@pytest.mark.parametrize("case", cases("bearer"), ids=repr)
async def test_bearer_token_as_the_api_routes_take_it(case: dict[str, Any]) -> None:
    assert bearer_token(case["authorization"]) == case["token"]
    # The FastAPI routes' own dependency (capstan.api.deps) agrees.
    headers = (
        []
        if case["authorization"] is None
        else [(b"authorization", case["authorization"].encode())]
    )
    request = Request({"type": "http", "headers": headers})
    credentials = await HTTPBearer(auto_error=False)(request)
    assert (credentials.credentials if credentials else None) == case["token"]


@pytest.mark.parametrize("case", cases("topic_matches"), ids=repr)
def test_topic_matches(case: dict[str, Any]) -> None:
    assert topic_matches(case["pattern"], case["routing_key"]) is case["matches"]


@pytest.mark.parametrize("case", cases("pattern_syntax"), ids=repr)
def test_pattern_syntax(case: dict[str, Any]) -> None:
    try:
        check_pattern(case["pattern"])
    except ValueError:
        valid = False
    else:
        valid = True
    assert valid is case["valid"]


@pytest.mark.parametrize("case", cases("if_none_match"), ids=repr)
def test_if_none_match(case: dict[str, Any]) -> None:
    assert none_match(case["header"], case["version"]) is case["matches"]


async def test_the_redis_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = VECTORS["redis_breaker"]
    clock = [0.0]
    monkeypatch.setattr(capstan.cache.redis.time, "monotonic", lambda: clock[0])
    link = RedisLink("redis://127.0.0.1:1")  # never connects: every op below is a stand-in
    assert (
        link.client.connection_pool.connection_kwargs["socket_timeout"] == spec["timeout_ms"] / 1000
    )
    assert link._retry_seconds == spec["retry_ms"] / 1000
    outcomes = {
        "connection_error": RedisConnectionError("refused"),
        "reply_error": ResponseError("ERR from a script"),
    }
    for step in spec["steps"]:
        clock[0] = step["at_ms"] / 1000
        tried: list[str] = []

        async def op(_client: object, what: str = step["op"], tried: list[str] = tried) -> str:
            tried.append(what)
            if what in outcomes:
                raise outcomes[what]
            return "PONG"

        try:
            if step["op"] == "ping_ok":
                link.client.ping = lambda: op(None)  # type: ignore[method-assign]
                await link.ping()
            else:
                await link.call(op)
        except CacheUnavailable:
            got = "unavailable" if tried else "fails_fast"
        except ResponseError:
            got = "reply_error"
        else:
            got = "ok"
        assert got == step["expect"], step
    await link.close()


@pytest.mark.parametrize("case", [c for c in cases("realtime_batch") if "audited" in c], ids=repr)
def test_realtime_batch_as_the_audit_subscriber_publishes_it(case: dict[str, Any]) -> None:
    audited = [(parse_event(a["received"].encode()), a["seq"]) for a in case["audited"]]
    message = batch_message(audited)
    expected = case["message"]
    assert message.content_type == expected["content_type"]
    assert message.routing_key == expected["routing_key"]
    assert message.headers == expected["headers"]
    assert message.body.decode() == expected["body"]
    read = read_batch(message)
    assert [(e["seq"], e["type"].removeprefix("capstan."), e["tenantid"]) for e in read] == [
        (r["seq"], r["key"], r["tenant"]) for r in case["read"]
    ]
    # Each line is the envelope received, plus its seq, and nothing else.
    assert [{k: v for k, v in e.items() if k != "seq"} for e in read] == [
        json.loads(a["received"]) for a in case["audited"]
    ]
