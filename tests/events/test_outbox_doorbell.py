"""Relays in other processes are woken after the commit, never by the writing transaction.

A NOTIFY sent by a writing transaction makes PostgreSQL serialize its commit with every other
such commit, WAL flush included (capstan.events.doorbell); the writers ring the relays after
their commit instead. The end-to-end test runs the production topology in three containers
(API; relay; worker and subscribers) with a relay that never polls in the test's time: every
event it publishes was announced by a ring from the process that committed it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from capstan.composition import build_background
from capstan.container import build_container
from capstan.db.dialect import POSTGRESQL
from capstan.db.engine import create_engine
from capstan.db.fastpath import FastPath
from capstan.db.schema import OutboxEvent, Task
from capstan.events.doorbell import OUTBOX_CHANNEL, OutboxDoorbell
from capstan.events.outbox import OUTBOX_INSERT
from tests.conftest import delete_namespace, stack_settings, start_api

DEADLINE = 60.0


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.mark.postgres
async def test_a_write_to_the_outbox_sends_no_notification(postgres_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    heard: list[Any] = []
    try:
        await conn.add_listener(OUTBOX_CHANNEL, lambda *args: heard.append(args))
        # A session hears its own notifications, delivered with the commit's reply: by the
        # time `execute` returns, asyncpg has scheduled the listener's call.
        await conn.execute(
            f"{OUTBOX_INSERT} VALUES ($1, 't-bell', 'document.updated', 'documents/x', "
            "'events', '{}'::jsonb, now())",
            str(uuid.uuid4()),
        )
        await asyncio.sleep(0)
        assert heard == [], "the outbox insert notified from the writing transaction"
        await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")  # the control: a ring is heard
        await asyncio.sleep(0)
        assert len(heard) == 1
    finally:
        await conn.execute("DELETE FROM outbox WHERE tenant_id = 't-bell'")
        await conn.close()


@pytest.mark.postgres
@pytest.mark.parametrize("through", ["fast path", "engine"])
async def test_the_postgres_notifier_reaches_a_listener(postgres_url: str, through: str) -> None:
    engine = create_engine(postgres_url, pool_size=1)
    fast = FastPath(postgres_url, max_size=1) if through == "fast path" else None
    channel = f"bell_{uuid.uuid4().hex[:8]}"
    listener = await asyncpg.connect(asyncpg_dsn(postgres_url))
    heard: list[Any] = []
    try:
        await listener.add_listener(channel, lambda *args: heard.append(args))
        notify = POSTGRESQL.notifier(engine, channel, fast)
        assert notify is not None
        await notify()
        await until(lambda: len(heard) == 1)
    finally:
        await listener.close()
        if fast is not None:
            await fast.close()
        await engine.dispose()


async def test_rings_during_a_notification_fold_into_one_and_failures_do_not_stop_it() -> None:
    calls: list[int] = []
    release = asyncio.Event()
    failing = [True]

    async def notify() -> None:
        calls.append(len(calls))
        await release.wait()
        if failing[0]:
            failing[0] = False
            raise OSError("database down")

    results: list[str] = []
    bell = OutboxDoorbell(notify, spacing=0.0, counted=results.append)
    bell.ring()
    await until(lambda: len(calls) == 1)
    for _ in range(5):  # while the first notification is in flight
        bell.ring()
    release.set()
    await until(lambda: len(calls) == 2)  # the five rings: one notification
    assert results == ["failed", "sent"]  # the first one failed
    bell.ring()
    await until(lambda: len(calls) == 3)
    assert results == ["failed", "sent", "sent"]  # capstan_outbox_rings_total
    await bell.close()


async def test_a_failed_notification_is_tried_again_once() -> None:
    calls: list[int] = []

    async def notify() -> None:
        calls.append(1)
        await asyncio.sleep(0)  # as a real round trip yields: a retry loop would show
        raise OSError("connection lost")  # a pooled connection a restart closed, then down

    bell = OutboxDoorbell(notify, spacing=0.0)
    bell.ring()
    await until(lambda: len(calls) >= 2)
    for _ in range(10):  # nothing more without a new ring: no loop against a server down
        await asyncio.sleep(0)
    assert len(calls) == 2
    await bell.close()


async def test_a_ring_not_sent_yet_is_sent_on_close() -> None:
    calls: list[int] = []

    async def notify() -> None:
        calls.append(1)

    bell = OutboxDoorbell(notify, spacing=0.0)
    bell.ring()  # its task has not run yet: a command that closes right after its commit
    await bell.close()
    assert calls == [1]
    await bell.close()  # nothing pending: nothing sent
    assert calls == [1]


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not condition():  # noqa: ASYNC110 - plain state of this test
            await asyncio.sleep(0.01)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_commits_in_other_processes_wake_the_relay(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = stack_settings("production", request, tmp_path).model_copy(
        update={
            "outbox_poll_seconds": 3600.0,  # only a ring can wake the relay within the test
            "subscribers": ["audit", "embedder"],
            "embeddings_enabled": True,
            "embeddings_reconcile_seconds": 0,
        }
    )
    api = await start_api(settings)  # writes: task submits and document writes
    relaying = build_container(settings)
    working = build_container(settings)  # stages embedding tasks, claims and finishes tasks
    backgrounds = []
    try:
        await relaying.start()
        await working.start()
        backgrounds.append(build_background(relaying, relay=True, subscribers=[]))
        backgrounds.append(build_background(working, relay=False, subscribers=["all"], worker=True))
        for background in backgrounds:
            await background.start()
        await until_async(lambda: relay_listens(settings.database_url))

        tenant = await api.tenant()
        async with api.client(tenant.key) as client:
            created = await client.post("/v1/documents", json={"title": "T", "body": "words"})
            assert created.status_code == 201, created.text
            submitted = await client.post("/v1/tasks", json={"type": "test.noop"})
            assert submitted.status_code in (200, 201, 202), submitted.text

        async def settled() -> bool:
            async with api.container.db() as session:
                unfinished = await session.scalar(
                    select(func.count())
                    .select_from(Task)
                    .where(Task.tenant_id == tenant.id, Task.status != "succeeded")
                )
                tasks = await session.scalar(
                    select(func.count()).select_from(Task).where(Task.tenant_id == tenant.id)
                )
                unsent = await session.scalar(
                    select(func.count())
                    .select_from(OutboxEvent)
                    .where(OutboxEvent.tenant_id == tenant.id, OutboxEvent.published_at.is_(None))
                )
            # The noop and the document's embedding task, both done and all events sent.
            return tasks == 2 and unfinished == 0 and unsent == 0

        await until_async(settled)
    finally:
        for background in reversed(backgrounds):
            await background.stop()
        for container in (working, relaying, api.container):
            await container.close()
        await delete_namespace(settings.broker_url, settings.broker_namespace)


async def relay_listens(database_url: str) -> bool:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        listening = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' "
            "AND query LIKE $1 AND datname = current_database()",
            f"%{OUTBOX_CHANNEL}%",
        )
    finally:
        await conn.close()
    return bool(listening)


async def until_async(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(DEADLINE):
        while not await condition():  # noqa: ASYNC110 - polls the database
            await asyncio.sleep(0.05)
