"""Notifier → dispatcher → a real HTTP receiver on 127.0.0.1 (both modes)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

from sqlalchemy import select

from capstan.db.schema import OutboxEvent
from capstan.events.envelope import encode, parse_event
from capstan.subscribers.notifier import NotifierSubscriber
from capstan.webhooks.dispatcher import WebhookDispatcher
from capstan.webhooks.signing import USER_AGENT, verify
from tests.webhooks.conftest import Hooks, Receiver, make_event


def attempts_metric(hooks: Hooks, outcome: str) -> float:
    registry = hooks.api.container.metrics.registry
    value = registry.get_sample_value("capstan_webhook_attempts_total", {"outcome": outcome})
    return value or 0.0


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def dispatch_next(dispatcher: WebhookDispatcher, timeout: float = 10.0) -> int:
    """Run passes until one sends something (the next retry may not be due yet)."""
    deadline = time.monotonic() + timeout
    while True:
        sent = await dispatcher.dispatch_due()
        if sent:
            return sent
        if time.monotonic() > deadline:
            raise AssertionError("nothing became due")
        await asyncio.sleep(0.02)


async def test_retries_after_receiver_errors_then_succeeds_signed(
    hooks: Hooks, receiver: Receiver
) -> None:
    receiver.statuses = [500, 500]
    tenant = await hooks.api.tenant()
    hook = await hooks.create(tenant.key, receiver.url, ["document.*"])
    # A real event: create a document through the API and take its outbox row.
    async with hooks.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"title": "t", "body": "b"})).json()
    async with hooks.api.container.db() as session:
        row = await session.scalar(select(OutboxEvent).where(OutboxEvent.tenant_id == tenant.id))
    assert row is not None
    event = parse_event(encode(row.envelope))
    await hooks.feed(event)

    base = 0.4
    dispatcher = hooks.dispatcher(webhook_retry_base_seconds=base, jitter=lambda: 0.5)
    gaps: list[float] = []
    for attempt in (1, 2, 3):
        assert await dispatch_next(dispatcher) == 1
        (delivery,) = await hooks.deliveries(tenant.key, hook["id"])
        assert delivery["attempts"] == attempt
        if attempt < 3:
            assert delivery["status"] == "pending"
            last = delivery["history"][-1]
            sent_done = ts(last["at"]).timestamp() + last["duration_ms"] / 1000
            gaps.append(ts(delivery["next_attempt_at"]).timestamp() - sent_done)

    # Recorded attempts, in order, with the receiver's answers.
    assert delivery["status"] == "succeeded" and delivery["next_attempt_at"] is None
    assert delivery["event_id"] == event.id and delivery["event_type"] == "capstan.document.created"
    history = delivery["history"]
    assert [a["attempt"] for a in history] == [1, 2, 3]
    assert [a["status_code"] for a in history] == [500, 500, 200]
    assert [a["error"] for a in history] == ["unexpected status 500"] * 2 + [None]
    assert all(a["duration_ms"] >= 0 for a in history)
    # Backoff doubles: base·2^(n-1) spread over its upper half (jitter pinned to 0.5 here, so
    # 0.75·base then 1.5·base). Lower bounds are exact; upper bounds allow for a slow machine.
    assert 0.75 * base - 0.01 <= gaps[0] <= 0.75 * base + 0.5
    assert 1.5 * base - 0.01 <= gaps[1] <= 1.5 * base + 0.5
    at = [ts(a["at"]) for a in history]
    spacing = [(at[1] - at[0]).total_seconds(), (at[2] - at[1]).total_seconds()]
    assert spacing[0] >= gaps[0] - 0.01 and spacing[1] >= gaps[1] - 0.01

    # What the receiver got: three signed, identical CloudEvents.
    assert len(receiver.requests) == 3
    secret = hook["secret"]
    for number, request in enumerate(receiver.requests, start=1):
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert request.path == "/hook"
        assert verify(secret, headers["capstan-signature"], request.body)
        assert not verify("whsec_wrong", headers["capstan-signature"], request.body)
        assert not verify(secret, headers["capstan-signature"], request.body + b" ")
        assert headers["capstan-event-id"] == event.id
        assert headers["capstan-event-type"] == "capstan.document.created"
        assert headers["capstan-delivery-attempt"] == str(number)
        assert headers["capstan-webhook-id"] == hook["id"]
        assert headers["content-type"] == "application/cloudevents+json"
        assert headers["user-agent"] == USER_AGENT
        assert headers["host"] == f"127.0.0.1:{receiver.port}"
        body = json.loads(request.body)
        assert body["specversion"] == "1.0" and body["id"] == event.id
        assert body["tenantid"] == tenant.id and body["data"]["id"] == doc["id"]
    assert attempts_metric(hooks, "failed") == 2 and attempts_metric(hooks, "succeeded") == 1
    async with hooks.client(tenant.key) as http:
        after = (await http.get(f"/v1/webhooks/{hook['id']}")).json()
    assert after["status"] == "active" and after["consecutive_failures"] == 0


async def test_persistent_failure_fails_delivery_then_disables_webhook(
    hooks: Hooks, receiver: Receiver
) -> None:
    receiver.then = 503
    tenant = await hooks.api.tenant()
    hook = await hooks.create(tenant.key, receiver.url)
    dispatcher = hooks.dispatcher(
        webhook_retry_base_seconds=0.05, webhook_max_attempts=3, webhook_disable_after_failures=4
    )
    first, second = make_event(tenant.id), make_event(tenant.id)
    await hooks.feed(first)
    await hooks.dispatch_until_settled(dispatcher)
    (delivery,) = await hooks.deliveries(tenant.key, hook["id"])
    assert delivery["status"] == "failed" and delivery["attempts"] == 3
    assert delivery["next_attempt_at"] is None
    assert [a["status_code"] for a in delivery["history"]] == [503, 503, 503]

    # The fourth consecutive failure (the second event's first attempt) disables the webhook.
    await hooks.feed(second)
    assert await dispatch_next(dispatcher) == 1
    async with hooks.client(tenant.key) as http:
        disabled = (await http.get(f"/v1/webhooks/{hook['id']}")).json()
    assert disabled["status"] == "disabled" and disabled["consecutive_failures"] == 4
    assert disabled["disabled_reason"] == (
        "disabled after 4 consecutive failed attempts; last: unexpected status 503"
    )
    # Paused: its pending delivery is not sent, and new events make no deliveries.
    await asyncio.sleep(0.2)
    assert await dispatcher.dispatch_due() == 0
    assert len(receiver.requests) == 4
    await hooks.feed(make_event(tenant.id))
    paused, _failed = await hooks.deliveries(tenant.key, hook["id"])  # no third delivery
    assert paused["event_id"] == second.id
    assert paused["status"] == "pending" and paused["attempts"] == 1

    # Enabling resets the failure count and resumes the paused delivery.
    receiver.then = 204
    async with hooks.client(tenant.key) as http:
        enabled = await http.post(f"/v1/webhooks/{hook['id']}/enable")
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["status"] == "active"
    assert enabled.json()["disabled_reason"] is None
    assert enabled.json()["consecutive_failures"] == 0
    assert await dispatcher.dispatch_due() == 1
    newest, _failed = await hooks.deliveries(tenant.key, hook["id"])
    assert newest["status"] == "succeeded" and newest["attempts"] == 2
    assert [a["status_code"] for a in newest["history"]] == [503, 204]


async def test_loopback_receiver_is_refused_without_allow_private(
    hooks: Hooks, receiver: Receiver
) -> None:
    tenant = await hooks.api.tenant()
    hook = await hooks.create(tenant.key, receiver.url)  # allowed by the API under test
    await hooks.feed(make_event(tenant.id))
    strict = hooks.dispatcher(webhook_allow_private=False)
    assert await strict.dispatch_due() == 1
    (delivery,) = await hooks.deliveries(tenant.key, hook["id"])
    assert receiver.requests == []
    assert delivery["status"] == "pending" and delivery["attempts"] == 1
    (attempt,) = delivery["history"]
    assert attempt["status_code"] is None
    assert attempt["error"] == "refused: 127.0.0.1 is a private address"
    assert attempts_metric(hooks, "refused") == 1


async def test_names_are_resolved_checked_and_pinned(hooks: Hooks, receiver: Receiver) -> None:
    """A name that resolves to a private address is refused; when allowed, the request goes to
    the address the guard checked, with the original name in `Host`."""
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    tenant = await hooks.api.tenant()
    url = f"http://hooks.example.test:{receiver.port}/in?x=1"
    hook = await hooks.create(tenant.key, url)
    await hooks.feed(make_event(tenant.id))
    strict = hooks.dispatcher(webhook_allow_private=False, resolver=resolver)
    assert await strict.dispatch_due() == 1
    assert receiver.requests == [] and lookups == ["hooks.example.test"]
    (delivery,) = await hooks.deliveries(tenant.key, hook["id"])
    assert delivery["history"][0]["error"] == "refused: 127.0.0.1 is a private address"

    allowing = hooks.dispatcher(webhook_retry_base_seconds=0.01, resolver=resolver)
    await hooks.dispatch_until_settled(allowing)
    (request,) = receiver.requests
    assert request.headers["Host"] == f"hooks.example.test:{receiver.port}"
    assert request.path == "/in?x=1"


async def test_unreachable_receiver_records_the_error(hooks: Hooks, receiver: Receiver) -> None:
    tenant = await hooks.api.tenant()
    dead = f"http://127.0.0.1:{receiver.port}/hook"
    hook = await hooks.create(tenant.key, dead.replace(str(receiver.port), "1"))
    await hooks.feed(make_event(tenant.id))
    assert await hooks.dispatcher().dispatch_due() == 1
    (delivery,) = await hooks.deliveries(tenant.key, hook["id"])
    (attempt,) = delivery["history"]
    assert attempt["status_code"] is None and attempt["error"].startswith("ConnectError")
    assert attempts_metric(hooks, "failed") == 1


async def test_same_event_twice_makes_one_delivery(hooks: Hooks) -> None:
    tenant = await hooks.api.tenant()
    hook = await hooks.create(tenant.key, "https://a.example.com/")
    event = make_event(tenant.id)
    await hooks.feed(event)
    await hooks.feed(event)
    deliveries = await hooks.deliveries(tenant.key, hook["id"])
    assert [d["event_id"] for d in deliveries] == [event.id]


async def test_patterns_select_events(hooks: Hooks) -> None:
    tenant = await hooks.api.tenant()
    tasks = await hooks.create(tenant.key, "https://a.example.com/", ["task.*"])
    docs = await hooks.create(tenant.key, "https://b.example.com/", ["document.created"])
    everything = await hooks.create(tenant.key, "https://c.example.com/", ["#"])
    created, deleted = make_event(tenant.id), make_event(tenant.id, action="deleted")
    await hooks.feed(created)
    await hooks.feed(deleted)
    assert await hooks.deliveries(tenant.key, tasks["id"]) == []
    assert [d["event_id"] for d in await hooks.deliveries(tenant.key, docs["id"])] == [created.id]
    got = [d["event_id"] for d in await hooks.deliveries(tenant.key, everything["id"])]
    assert got == [deleted.id, created.id]


async def test_webhooks_only_receive_their_own_tenants_events(
    hooks: Hooks, receiver: Receiver
) -> None:
    a, b = await hooks.api.tenant(), await hooks.api.tenant()
    hook_a = await hooks.create(a.key, receiver.url + "?tenant=a")
    hook_b = await hooks.create(b.key, receiver.url + "?tenant=b")
    event = make_event(a.id)
    await hooks.feed(event)
    await hooks.dispatch_until_settled(hooks.dispatcher())
    assert [r.path for r in receiver.requests] == ["/hook?tenant=a"]
    assert await hooks.deliveries(b.key, hook_b["id"]) == []
    assert [d["event_id"] for d in await hooks.deliveries(a.key, hook_a["id"])] == [event.id]
    async with hooks.client(b.key) as http:
        peek = await http.get(f"/v1/webhooks/{hook_a['id']}/deliveries")
    assert peek.status_code == 404


async def test_run_loop_is_woken_by_the_notifier_after_commit(
    hooks: Hooks, receiver: Receiver
) -> None:
    tenant = await hooks.api.tenant()
    await hooks.create(tenant.key, receiver.url)
    # A long poll interval: only the notifier's nudge can make the send prompt.
    dispatcher = hooks.dispatcher(poll_seconds=60.0)
    stopping = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stopping))
    try:
        await asyncio.sleep(0.1)  # the first pass finds nothing and waits
        await hooks.feed(make_event(tenant.id), NotifierSubscriber(wake=dispatcher.wake))
        assert await asyncio.to_thread(receiver.got_request.wait, 10)
        assert len(receiver.requests) == 1
    finally:
        stopping.set()
        await asyncio.wait_for(task, 5)
