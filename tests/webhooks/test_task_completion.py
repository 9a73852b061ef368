"""A task's completion reaches a webhook with its result, end to end: API → outbox → relay →
worker → task.succeeded event → notifier → signed delivery to a real HTTP receiver."""

from __future__ import annotations

import asyncio
import json

from capstan.webhooks.signing import verify
from tests.conftest import Stack
from tests.webhooks.conftest import Receiver


async def test_task_completion_is_delivered_to_a_webhook_with_the_result(
    stack: Stack, receiver: Receiver
) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        hook = (
            await http.post(
                "/v1/webhooks", json={"url": receiver.url, "patterns": ["task.succeeded"]}
            )
        ).json()
        task = (
            await http.post(
                "/v1/tasks",
                json={
                    "type": "text.language",
                    "input": {"text": "Guten Morgen, wie geht es dir heute?"},
                },
            )
        ).json()

    async def delivered() -> bool:
        return bool(receiver.requests)

    await stack.until(delivered, timeout=60, what="the webhook delivery")
    await asyncio.sleep(0.3)  # nothing else is due: only task.succeeded matches
    [request] = receiver.requests
    event = json.loads(request.body)
    assert event["type"] == "capstan.task.succeeded"
    assert event["data"]["id"] == task["id"]
    assert event["data"]["result"]["language"] == "de"
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert verify(hook["secret"], headers["capstan-signature"], request.body)
