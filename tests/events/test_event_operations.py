"""Recovery commands: replay and dead-letter inspection, in both modes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from capstan.broker.port import Message
from capstan.composition import event_flow
from capstan.db.schema import AuditEntry
from capstan.events.operations import dead_letters, replay
from capstan.events.outbox import add_envelope, add_task_message, envelope
from tests.conftest import Stack, stack_settings, start_stack, stop_stack


def _sample(stack: Stack, name: str, labels: dict[str, str]) -> float:
    return stack.container.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_replay_to_one_subscriber_reapplies_and_to_all_repairs_only_gaps(
    stack: Stack,
) -> None:
    tenant = await stack.api.tenant()
    since = datetime.now(UTC) - timedelta(seconds=1)
    async with stack.api.client(tenant.key) as http:
        for i in range(4):
            await http.post("/v1/documents", json={"body": f"r{i}"})

    async def audited() -> bool:
        async with stack.container.db() as session:
            n = await session.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.tenant_id == tenant.id)
            )
        return n == 4

    await stack.until(audited, what="four audit entries")
    indexed = "capstan_indexer_events_total"

    async def indexed_count(expected: float) -> bool:
        return _sample(stack, indexed, {"action": "created"}) >= expected

    await stack.until(lambda: indexed_count(4), what="four creations indexed")
    assert (
        await replay(event_flow(stack.container), since, subscriber="indexer", tenant_id=tenant.id)
        == 4
    )
    await stack.until(lambda: indexed_count(8), what="the indexer to re-apply four events")

    before = _sample(
        stack, "capstan_events_consumed_total", {"subscriber": "audit", "outcome": "duplicate"}
    )
    assert await replay(event_flow(stack.container), since, tenant_id=tenant.id) == 4

    async def skipped() -> bool:
        now = _sample(
            stack, "capstan_events_consumed_total", {"subscriber": "audit", "outcome": "duplicate"}
        )
        return now >= before + 4

    await stack.until(skipped, what="audit to skip four replayed events")
    assert await audited()


async def test_dead_letters_are_listed_and_requeued(stack: Stack) -> None:
    c = stack.container
    bad = Message("document.deleted", b"not an event", uuid.uuid4().hex)
    await c.broker.publish([bad], c.topology.events_exchange)

    async def listed() -> bool:
        found = await dead_letters(event_flow(c), ["cache"], requeue=False)
        return [d.event_id for d in found] == [bad.message_id]

    await stack.until(listed, what="the bad message in the cache dead letters")
    [letter] = await dead_letters(event_flow(c), ["cache"], requeue=True)
    assert letter.subscriber == "cache" and letter.reason.startswith("malformed")

    async def dead_again() -> bool:
        dead = _sample(
            stack,
            "capstan_events_consumed_total",
            {"subscriber": "cache", "outcome": "dead_lettered"},
        )
        return dead >= 2

    await stack.until(dead_again, what="the requeued message to be consumed (and refused) again")


@pytest.mark.parametrize(
    "mode",
    [
        "embedded",
        pytest.param(
            "production",
            marks=[pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq],
        ),
    ],
)
async def test_replay_sends_events_only_where_they_are_taken_and_skips_task_messages(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Only the indexer enabled: a task event no subscriber takes is not needed, not an
    error; a task's dispatch message (the outbox's other channel) is not an event; a replay
    aimed at one subscriber sends it only what it takes."""
    settings = stack_settings(mode, request, tmp_path).model_copy(
        update={"subscribers": ["indexer"]}
    )
    stack = await start_stack(settings, worker=False)
    try:
        tenant = await stack.api.tenant()
        since = datetime.now(UTC) - timedelta(seconds=1)
        async with stack.api.client(tenant.key) as http:
            created = await http.post("/v1/documents", json={"body": "replayed"})
            assert created.status_code == 201
        async with stack.container.db.begin() as session:
            add_envelope(
                session,
                envelope(
                    source="test",
                    entity="task",
                    action="succeeded",
                    tenant_id=tenant.id,
                    subject="tasks/t-replay",
                    data={"id": "t-replay"},
                ),
            )
            add_task_message(
                session, tenant_id=tenant.id, queue="default", task_id="t-replay", priority=0
            )
        flow = event_flow(stack.container)
        # The document's event and the task event: both sent, the dispatch message left out.
        assert await replay(flow, since, source="outbox", tenant_id=tenant.id) == 2
        # Aimed at the indexer: only what it takes (the document's event).
        assert (
            await replay(flow, since, subscriber="indexer", source="outbox", tenant_id=tenant.id)
            == 1
        )
    finally:
        await stop_stack(stack)
