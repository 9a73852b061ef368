"""A task message is always settled, whatever the claim runs into: an unsettled message would
sit on its channel while the task stays queued (already dispatched) and nobody runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from capstan.broker.port import Message
from capstan.worker.worker import Worker
from tests.conftest import embedded_settings, start_api


class FakeDelivery:
    def __init__(self, body: bytes) -> None:
        self.message = Message(routing_key="tasks.default", body=body, message_id="m1")
        self.attempt = 1
        self.settled: list[tuple[str, object]] = []

    async def ack(self) -> None:
        self.settled.append(("ack", None))

    async def retry(self, delay_ms: int, *, count_attempt: bool = True) -> None:
        self.settled.append(("retry", (delay_ms, count_attempt)))

    async def dead_letter(self, reason: str) -> None:
        self.settled.append(("dead_letter", reason))


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
        worker = Worker(api.container, api.container.task_registry, concurrency=1)

        async def failing_claim(task_id: str) -> None:
            raise error

        worker._claim = failing_claim  # type: ignore[method-assign]
        delivery = FakeDelivery(json.dumps({"task_id": "01"}).encode())
        await worker.on_delivery(delivery)
        assert delivery.settled == [("retry", (1000, counted))]
    finally:
        await api.container.close()
