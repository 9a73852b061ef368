"""The event-driven flow end to end: write → outbox → relay → exchange → every subscriber."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select

from capstan.broker.port import Message
from capstan.db.schema import AuditEntry, OutboxEvent, ProcessedEvent
from capstan.subscribers.runtime import queue_spec
from tests.conftest import Stack


async def _audit_count(stack: Stack, tenant_id: str) -> int:
    async with stack.container.db() as session:
        count = await session.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.tenant_id == tenant_id)
        )
    return int(count or 0)


async def test_a_change_is_audited_and_listed_in_order_by_get_events(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
        await http.patch(f"/v1/documents/{doc['id']}", json={"body": "v2"})
        await http.delete(f"/v1/documents/{doc['id']}")

        async def three() -> bool:
            return await _audit_count(stack, tenant.id) >= 3

        await stack.until(three, what="three audit entries")
        page = (await http.get("/v1/events")).json()
        only_updates = (await http.get("/v1/events", params={"type": "document.updated"})).json()
        by_subject = (
            await http.get("/v1/events", params={"subject": f"documents/{doc['id']}", "limit": 2})
        ).json()
        rest = (await http.get("/v1/events", params={"after": by_subject["next_after"]})).json()

    types = [item["event"]["type"] for item in page["items"]]
    assert types == [
        "capstan.document.created",
        "capstan.document.updated",
        "capstan.document.deleted",
    ]
    seqs = [item["seq"] for item in page["items"]]
    assert seqs == sorted(seqs)
    first = page["items"][0]["event"]
    assert first["specversion"] == "1.0" and first["tenantid"] == tenant.id
    assert first["subject"] == f"documents/{doc['id']}" and first["data"]["version"] == 1
    assert [i["event"]["type"] for i in only_updates["items"]] == ["capstan.document.updated"]
    assert len(by_subject["items"]) == 2 and len(rest["items"]) == 1


async def test_every_subscriber_applies_each_event_exactly_once(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        for i in range(20):
            await http.post("/v1/documents", json={"body": f"doc {i}"})

    # The cache subscriber listens to updates and deletes only; creates reach the other three.
    # The runtime's counters are this process's: a leftover of another test in the shared
    # database (a task this stack's worker finishes) adds to them, so they are lower bounds;
    # the audit log counts this tenant's events exactly (unique event ids).
    def processed_by(name: str) -> float:
        value = stack.container.metrics.registry.get_sample_value(
            "capstan_events_consumed_total", {"subscriber": name, "outcome": "processed"}
        )
        return value or 0.0

    async def processed() -> bool:
        return (
            all(processed_by(n) >= 20 for n in ("indexer", "audit", "notifier"))
            and await _audit_count(stack, tenant.id) == 20
        )

    await stack.until(processed, what="indexer and audit to process 20 events")
    async with stack.container.db() as session:
        unpublished = await session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        )
    assert unpublished == 0
    assert await _audit_count(stack, tenant.id) == 20
    # Idempotent by themselves (versions), the indexer and the cache record nothing per event;
    # with the in-process broker every handling is on record (a restart replays from it).
    async with stack.container.db() as session:
        recorded = await session.scalar(
            select(func.count())
            .select_from(ProcessedEvent)
            .where(
                ProcessedEvent.subscriber.in_(["indexer", "cache"]),
                ProcessedEvent.event_id.in_(
                    select(OutboxEvent.event_id).where(OutboxEvent.tenant_id == tenant.id)
                ),
            )
        )
    in_process = stack.container.settings.broker_url.startswith("memory")
    assert recorded == (20 if in_process else 0)  # the creates reach the indexer only


async def test_a_duplicate_delivery_has_one_effect(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        await http.post("/v1/documents", json={"body": "once"})

    async def audited() -> bool:
        return await _audit_count(stack, tenant.id) == 1

    await stack.until(audited, what="the audit entry")
    async with stack.container.db() as session:
        envelope = await session.scalar(
            select(OutboxEvent.envelope).where(OutboxEvent.tenant_id == tenant.id)
        )
    assert envelope is not None
    message = Message("document.created", json.dumps(envelope).encode(), envelope["id"])
    await stack.container.broker.publish(
        [message, message], stack.container.topology.events_exchange
    )

    async def duplicates_seen() -> bool:
        registry = stack.container.metrics.registry
        value = registry.get_sample_value(
            "capstan_events_consumed_total", {"subscriber": "audit", "outcome": "duplicate"}
        )
        return (value or 0) >= 2

    await stack.until(duplicates_seen, what="both duplicates to be skipped")
    assert await _audit_count(stack, tenant.id) == 1


async def test_a_poison_event_is_dead_lettered_while_others_keep_flowing(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    c = stack.container
    # Malformed: dead-lettered at once. Well-formed but impossible to apply (no version):
    # retried event_max_attempts times by the cache subscriber, then dead-lettered.
    garbage = Message("document.updated", b"\x00not json", uuid.uuid4().hex)
    impossible = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "test",
        "type": "capstan.document.updated",
        "time": datetime.now(UTC).isoformat(),
        "subject": "documents/x",
        "tenantid": tenant.id,
        "data": {"id": "x"},
    }
    poison = Message("document.updated", json.dumps(impossible).encode(), impossible["id"])
    await c.broker.publish([garbage, poison], c.topology.events_exchange)
    async with stack.api.client(tenant.key) as http:
        for i in range(5):
            await http.post("/v1/documents", json={"body": f"healthy {i}"})

    async def healthy_audited() -> bool:
        return await _audit_count(stack, tenant.id) >= 5

    await stack.until(healthy_audited, what="healthy events to flow past the poison")

    from capstan.composition import build_subscriber

    spec = queue_spec(build_subscriber(c, "cache"), c.settings.event_retry_delays_ms, c.topology)

    async def both_dead() -> bool:
        return len(await c.broker.dead_letters(spec)) == 2

    await stack.until(both_dead, what="two dead letters in the cache subscriber's queue")
    letters = {m.message_id: m for m in await c.broker.dead_letters(spec)}
    assert str(letters[garbage.message_id].headers["x-capstan-death-reason"]).startswith(
        "malformed"
    )
    assert "KeyError" in str(letters[poison.message_id].headers["x-capstan-death-reason"])
    retried = c.metrics.registry.get_sample_value(
        "capstan_events_consumed_total", {"subscriber": "cache", "outcome": "retried"}
    )
    assert retried == c.settings.event_max_attempts - 1


async def test_events_and_the_feed_are_scoped_to_the_tenant(stack: Stack) -> None:
    a, b = await stack.api.tenant(), await stack.api.tenant()
    async with stack.api.client(a.key) as http_a:
        await http_a.post("/v1/documents", json={"body": "a only"})

    async def audited() -> bool:
        return await _audit_count(stack, a.id) == 1

    await stack.until(audited, what="a's audit entry")
    async with stack.api.client(b.key) as http_b:
        feed = (await http_b.get("/v1/events")).json()
    assert feed == {"items": [], "next_after": None}
