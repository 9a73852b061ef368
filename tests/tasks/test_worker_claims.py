"""A task always finds a worker: its message is settled whatever the claim runs into (an
unsettled one sits on its channel), and a queued task whose message was lost is dispatched
again."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from capstan.broker.port import Message
from capstan.composition import build_worker
from capstan.db.schema import Task
from capstan.ids import uuid7
from tests.conftest import Stack, embedded_settings, start_api


class FakeDelivery:
    def __init__(self, body: bytes) -> None:
        self.message = Message(routing_key="tasks.default", body=body, message_id="m1")
        self.attempt = 1
        self.settled: list[tuple[str, object]] = []

    async def ack(self) -> None:
        self.settled.append(("ack", None))

    async def ack_with(self, earlier: Sequence[Any]) -> None:
        for delivery in earlier:
            await delivery.ack()
        await self.ack()

    async def retry(self, delay_ms: int, *, count_attempt: bool = True) -> None:
        self.settled.append(("retry", (delay_ms, count_attempt)))

    async def dead_letter(self, reason: str) -> None:
        self.settled.append(("dead_letter", reason))


async def test_a_claim_that_keeps_failing_dead_letters_its_message(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path).model_copy(update={"task_claim_max_errors": 3})
    api = await start_api(settings)
    try:
        worker = build_worker(api.container, concurrency=1)

        async def failing_claim(task_id: str) -> None:
            raise RuntimeError("schema out of step")

        worker._claim = failing_claim  # type: ignore[method-assign]
        settled = []
        for attempt in (1, 2, 3):
            delivery = FakeDelivery(json.dumps({"task_id": "01"}).encode())
            delivery.attempt = attempt
            await worker.on_delivery(delivery)
            settled += delivery.settled
        assert settled[:2] == [("retry", (1000, True))] * 2
        kind, reason = settled[2]
        assert kind == "dead_letter"
        assert "task 01 failed 3 times" in str(reason) and "schema out of step" in str(reason)
    finally:
        await api.container.close()


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        (OperationalError("SELECT", {}, ConnectionRefusedError()), False),  # database down
        (RuntimeError("pool in a state nobody expected"), True),  # anything else
    ],
)
async def test_a_failed_claim_retries_the_message_instead_of_leaving_it_unsettled(
    tmp_path: Path, error: Exception, counted: bool
) -> None:
    api = await start_api(embedded_settings(tmp_path))
    try:
        worker = build_worker(api.container, concurrency=1)

        async def failing_claim(task_id: str) -> None:
            raise error

        worker._claim = failing_claim  # type: ignore[method-assign]
        delivery = FakeDelivery(json.dumps({"task_id": "01"}).encode())
        await worker.on_delivery(delivery)
        assert delivery.settled == [("retry", (1000, counted))]
    finally:
        await api.container.close()


async def test_a_queued_task_whose_message_was_lost_is_dispatched_again(stack: Stack) -> None:
    """A task row says queued and dispatched long ago, but no message exists (lost to a bug, or
    a purged queue): maintenance sees its queue empty, dispatches it again, and it runs."""
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        answer = await http.post("/v1/tasks", json={"type": "test.record", "input": {"value": 1}})
        assert answer.status_code == 202
    async with stack.container.db.begin() as session:
        template = await session.get(Task, answer.json()["id"])
        assert template is not None
        now = datetime.now(UTC)
        lost = Task(
            **{
                c.key: getattr(template, c.key)
                for c in Task.__table__.columns
                if c.key not in ("id", "idempotency_key")
            }
        )
        lost.id, lost.status, lost.attempts, lost.worker_id = uuid7(), "queued", 0, None
        lost.input = {"value": 2}
        lost.result = lost.started_at = lost.finished_at = None
        lost.run_at = lost.created_at = lost.updated_at = now - timedelta(hours=1)
        lost.dispatched_at = now - timedelta(hours=1)  # its message: never published
        session.add(lost)
    lost_id = lost.id

    async def ran() -> bool:
        async with stack.container.db() as session:
            row = await session.get(Task, lost_id)
            return row is not None and row.status == "succeeded"

    await stack.until(ran, timeout=60, what="the lost task to be dispatched again and run")
    assert stack.container.metrics.tasks_redispatched._value.get() >= 1
