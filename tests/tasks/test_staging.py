"""Tasks staged by a subscriber: the embedder's batch on PostgreSQL is ONE statement
(`stage_many`) and writes what the portable `stage_task` writes — the task row, its
`task.queued` event and its dispatch message — once per idempotency key, without a
processed_events row, so a redelivered batch stages nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.db.engine import create_engine, sessionmaker
from capstan.db.fastpath import FastPath
from capstan.db.schema import OutboxEvent, ProcessedEvent, Task
from capstan.db.schema import Tenant as SchemaTenant
from capstan.events.envelope import Event, parse_event
from capstan.settings import Settings
from capstan.subscribers.embedder import EmbedderSubscriber
from capstan.tasks.handlers.embeddings import TYPE, register
from capstan.tasks.registry import TaskRegistry
from tests.events.messages import document_updated

pytestmark = pytest.mark.postgres


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], FastPath]]:
    engine = create_engine(postgres_url, pool_size=2)
    fast = FastPath(postgres_url, max_size=2)
    try:
        yield sessionmaker(engine), fast
    finally:
        await fast.close()
        await engine.dispose()


def _registry() -> TaskRegistry:
    registry = TaskRegistry()
    register(registry, lambda: pytest.fail("staging never runs the pipeline"))
    return registry


async def _tenant(db: async_sessionmaker[AsyncSession]) -> str:
    tenant_id = f"t-{uuid.uuid4().hex[:8]}"
    async with db.begin() as session:
        session.add(SchemaTenant(id=tenant_id, name=tenant_id, created_at=datetime.now(UTC)))
    return tenant_id


def _event(tenant: str, doc: str, version: int) -> Event:
    return parse_event(document_updated(tenant, doc, version).body)


async def _staged(db: async_sessionmaker[AsyncSession], tenant: str) -> dict[str, Any]:
    async with db() as session:
        tasks = (await session.scalars(select(Task).where(Task.tenant_id == tenant))).all()
        rows = (
            await session.scalars(select(OutboxEvent).where(OutboxEvent.tenant_id == tenant))
        ).all()
        recorded = await session.scalar(
            select(func.count())
            .select_from(ProcessedEvent)
            .where(ProcessedEvent.subscriber == "embedder")
        )
    return {"tasks": tasks, "outbox": rows, "processed": recorded}


def _shape(staged: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on the path: every column but ids and times, and the envelopes."""
    [task] = staged["tasks"]
    event = next(r for r in staged["outbox"] if r.channel == "events")
    message = next(r for r in staged["outbox"] if r.channel == "tasks")
    skip = {"id", "tenant_id", "idempotency_key", "input", "run_at", "dispatched_at"}
    skip |= {"created_at", "updated_at"}
    return {
        "task": {
            c.name: getattr(task, c.name) for c in Task.__table__.columns if c.name not in skip
        },
        "dispatched": task.dispatched_at is not None,
        "event": (event.routing_key, event.subject == f"tasks/{task.id}"),
        "envelope": {
            k: v
            for k, v in event.envelope.items()
            if k not in ("id", "time", "tenantid", "subject")
        }
        | {"data": {k: v for k, v in event.envelope["data"].items() if k != "id"}},
        "message": (message.routing_key, message.envelope == {"task_id": task.id, "priority": 0}),
    }


async def test_a_batch_is_staged_once_per_version_as_the_orm_path_stages_one(
    db: tuple[async_sessionmaker[AsyncSession], FastPath],
) -> None:
    sessions, fast = db
    settings = Settings()
    registry = _registry()
    fast_embedder = EmbedderSubscriber(registry, settings, fast)
    orm_embedder = EmbedderSubscriber(registry, settings)
    assert fast_embedder.apply_batch is not None and orm_embedder.apply_batch is None

    tenant = await _tenant(sessions)
    batch = [_event(tenant, "d1", 1), _event(tenant, "d2", 1), _event(tenant, "d1", 2)]
    batch.append(batch[0])  # a duplicate delivery inside the batch
    neighbour = await _tenant(sessions)
    batch.append(_event(neighbour, "d1", 1))  # the same key in another tenant: its own task
    results = await fast_embedder.apply_batch(batch)
    assert [fresh for _, fresh in results] == [True] * 5
    assert len((await _staged(sessions, neighbour))["tasks"]) == 1

    staged = await _staged(sessions, tenant)
    keys = sorted(t.idempotency_key for t in staged["tasks"])
    assert keys == [f"{TYPE}:d1:1", f"{TYPE}:d1:2", f"{TYPE}:d2:1"]
    assert sorted(r.channel for r in staged["outbox"]) == ["events"] * 3 + ["tasks"] * 3
    assert staged["processed"] == 0  # the idempotency key is the record

    # Redelivered (a crash before the ack): nothing new.
    await fast_embedder.apply_batch(batch)
    again = await _staged(sessions, tenant)
    assert (len(again["tasks"]), len(again["outbox"])) == (3, 6)

    # The same event staged by the portable path, for another tenant: the same rows.
    other = await _tenant(sessions)
    async with sessions.begin() as session:
        await orm_embedder.handle(_event(other, "d1", 1), session)
    one = await _tenant(sessions)
    await fast_embedder.apply_batch([_event(one, "d1", 1)])
    assert _shape(await _staged(sessions, one)) == _shape(await _staged(sessions, other))
