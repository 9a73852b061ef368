"""A three-node RabbitMQ cluster with quorum queues: kill -9 one node while 1,000 tasks and
1,000 events flow, and every task's effect and every event's audit entry exists exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from capstan.db.schema import AuditEntry
from tests.conftest import Stack, stack_settings, start_stack
from tests.servers import RabbitCluster, started
from tests.tasks.test_task_failures import _all_done_once, _submit

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]

HALF = 500


@pytest.fixture
def cluster() -> Iterator[RabbitCluster]:
    nodes = started(RabbitCluster)
    try:
        yield nodes
    finally:
        nodes.stop()


async def create_documents(stack: Stack, key: str, start: int, count: int) -> list[str]:
    """Documents (one `document.created` event each) from concurrent clients."""
    ids: list[str] = []

    async def client(offset: int) -> None:
        async with stack.api.client(key) as http:
            for i in range(start + offset, start + count, 8):
                answer = await http.post("/v1/documents", json={"body": f"doc {i}"})
                assert answer.status_code == 201, answer.text
                ids.append(answer.json()["id"])

    await asyncio.gather(*(client(n) for n in range(8)))
    return ids


async def audited(stack: Stack, tenant_id: str) -> tuple[int, int]:
    """(audit entries of capstan.document.created, distinct event ids among them)."""
    async with stack.container.db() as session:
        row = (
            await session.execute(
                select(func.count(), func.count(func.distinct(AuditEntry.event_id))).where(
                    AuditEntry.tenant_id == tenant_id, AuditEntry.type == "capstan.document.created"
                )
            )
        ).one()
    return int(row[0]), int(row[1])


async def test_a_node_loss_loses_and_duplicates_nothing(
    cluster: RabbitCluster, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = stack_settings("production", request, tmp_path).model_copy(
        update={"broker_url": cluster.url, "broker_queue_type": "quorum"}
    )
    stack = await start_stack(settings)
    try:
        tenant = await stack.api.tenant()
        # Given half the tasks and events sent through the cluster
        first = await _submit(stack, tenant.key, HALF, clients=8, sleep=0)
        docs = await create_documents(stack, tenant.key, 0, HALF)
        # When the node every connection started on is killed
        cluster.nodes[0].kill()
        # Then the other half goes through the two left, and everything is done exactly once
        # (keys k-0..k-999: the first half's keys answer their existing tasks)
        tasks = await _submit(stack, tenant.key, 2 * HALF, clients=8, sleep=0)
        assert set(first) <= set(tasks)
        docs += await create_documents(stack, tenant.key, HALF, HALF)
        await _all_done_once(stack, tenant.id, tasks, timeout=300)

        async def all_audited() -> bool:
            return (await audited(stack, tenant.id))[0] >= len(docs)

        await stack.until(all_audited, timeout=300, what="every document.created audited")
        assert await audited(stack, tenant.id) == (2 * HALF, 2 * HALF)
    finally:
        # Not stop_stack: its namespace clean-up needs the dead node; the cluster goes anyway.
        await stack.background.stop()
        await stack.container.close()
