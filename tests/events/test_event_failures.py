"""The event flow under failure: a relay crash after publishing, RabbitMQ restarted under load."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from capstan.db.schema import AuditEntry, OutboxEvent, ProcessedEvent
from tests.conftest import Stack, stack_settings, start_stack, stop_stack

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services"


class Crash(Exception):
    pass


async def audited_and_unsent(stack: Stack, tenant_id: str) -> tuple[int, int]:
    """The tenant's audit entries, and its outbox events not yet published."""
    async with stack.container.db() as session:
        audited = await session.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.tenant_id == tenant_id)
        )
        unsent = await session.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.tenant_id == tenant_id, OutboxEvent.published_at.is_(None))
        )
    return int(audited or 0), int(unsent or 0)


@pytest.mark.parametrize(
    "mode",
    [
        "embedded",
        pytest.param(
            "production", marks=[pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]
        ),
    ],
)
async def test_a_relay_that_dies_after_publishing_loses_nothing_and_duplicates_nothing(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = stack_settings(mode, request, tmp_path)
    stack = await start_stack(settings)
    try:
        relay = stack.background.relay
        crashes = 0

        def die() -> None:
            nonlocal crashes
            if crashes < 2:
                crashes += 1
                raise Crash("killed between confirm and commit")

        relay.fail_after_publish = die
        tenant = await stack.api.tenant()
        async with stack.api.client(tenant.key) as http:
            doc = (await http.post("/v1/documents", json={"body": "survives"})).json()

        async def audited_and_marked() -> bool:
            return await audited_and_unsent(stack, tenant.id) == (1, 0)

        await stack.until(audited_and_marked, what="the event to be audited and marked sent")
        assert crashes == 2  # published three times in all
        duplicates = stack.container.metrics.registry.get_sample_value(
            "capstan_events_consumed_total", {"subscriber": "audit", "outcome": "duplicate"}
        )

        async def both_duplicates_skipped() -> bool:
            value = stack.container.metrics.registry.get_sample_value(
                "capstan_events_consumed_total", {"subscriber": "audit", "outcome": "duplicate"}
            )
            return (value or 0) >= 2

        await stack.until(both_duplicates_skipped, what="the two re-publications to be skipped")
        async with stack.container.db() as session:
            entries = list(
                await session.scalars(
                    select(AuditEntry.subject).where(AuditEntry.tenant_id == tenant.id)
                )
            )
        assert entries == [f"documents/{doc['id']}"]
        assert duplicates is not None
    finally:
        await stop_stack(stack)


@pytest.mark.services
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_rabbitmq_restarted_during_1000_concurrent_writes_loses_and_doubles_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    services = SERVICES
    stack = await start_stack(stack_settings("production", request, tmp_path))
    try:
        tenant = await stack.api.tenant()
        writes_done = 0
        third_done = asyncio.Event()

        async def client(n: int) -> None:
            nonlocal writes_done
            async with stack.api.client(tenant.key) as http:
                doc = None
                for i in range(100):
                    if doc is None or i % 3 == 0:
                        answer = await http.post("/v1/documents", json={"body": f"c{n}-{i}"})
                        assert answer.status_code == 201, answer.text
                        doc = answer.json()
                    else:
                        answer = await http.patch(
                            f"/v1/documents/{doc['id']}", json={"body": f"c{n}-{i}"}
                        )
                        assert answer.status_code == 200, answer.text
                    writes_done += 1
                    if writes_done >= 300:
                        third_done.set()
                    await asyncio.sleep(0.005)

        async def restart_midway() -> None:
            await third_done.wait()
            await asyncio.to_thread(subprocess.run, [str(services), "down", "rabbitmq"], check=True)
            await asyncio.to_thread(subprocess.run, [str(services), "up", "rabbitmq"], check=True)

        await asyncio.gather(*(client(n) for n in range(10)), restart_midway())
        assert writes_done == 1000

        counts = (0, 0)

        async def all_delivered() -> bool:
            nonlocal counts
            counts = await audited_and_unsent(stack, tenant.id)
            return counts[0] == 1000

        try:
            await stack.until(all_delivered, timeout=180, what="all 1000 events to be audited")
        except AssertionError as exc:  # say where it stuck: the relay or the subscribers
            raise AssertionError(f"{exc}: {counts[0]} audited, {counts[1]} not published") from exc
        async with stack.container.db() as session:
            committed = set(
                await session.scalars(
                    select(OutboxEvent.event_id).where(OutboxEvent.tenant_id == tenant.id)
                )
            )
            audited = list(
                await session.scalars(
                    select(AuditEntry.event_id).where(AuditEntry.tenant_id == tenant.id)
                )
            )
            per_subscriber = dict(
                (
                    await session.execute(
                        select(ProcessedEvent.subscriber, func.count())
                        .where(ProcessedEvent.event_id.in_(committed))
                        .group_by(ProcessedEvent.subscriber)
                    )
                ).all()
            )
        assert len(committed) == 1000
        assert len(audited) == len(set(audited)) == 1000  # each event id exactly once
        assert set(audited) == committed  # none missing
        # The audit's exactly-once is its own table (unique event ids above). The indexer and
        # the cache are idempotent by themselves (versions): no processed_events rows, and
        # each handled every event it is bound to at least once (a redelivery across the
        # restart may count twice): every event for the indexer, the updates for the cache.
        assert per_subscriber == {}

        def handled(name: str) -> float:
            value = stack.container.metrics.registry.get_sample_value(
                "capstan_events_consumed_total", {"subscriber": name, "outcome": "processed"}
            )
            return value or 0.0

        async def indexed_and_invalidated() -> bool:
            return handled("indexer") >= 1000 and handled("cache") >= 1000 - 10 * 34

        await stack.until(indexed_and_invalidated, timeout=60, what="indexer and cache")
    finally:
        await asyncio.to_thread(subprocess.run, [str(services), "up", "rabbitmq"], check=False)
        await stop_stack(stack)
