"""The task flow through the API, in both modes: submit → queue → worker → result → events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from capstan.db.schema import AuditEntry, Task
from capstan.worker.queues import task_queue_spec
from tests.conftest import Stack, stack_settings, start_stack, stop_stack

TEXT = (
    "Capstan is a backend for AI applications. It stores documents in PostgreSQL and caches "
    "them in Redis. Tasks run on workers that consume RabbitMQ queues. Search merges "
    "Elasticsearch relevance with structured filters. The weather was nice yesterday."
)


async def _finished(
    stack: Stack, http: httpx.AsyncClient, url: str, timeout: float = 60
) -> dict[str, Any]:
    result: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal result
        result = (await http.get(url)).json()
        return result["status"] in ("succeeded", "failed", "cancelled")

    await stack.until(done, timeout=timeout, what=f"{url} to finish")
    return result


async def _events(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    async with stack.container.db() as session:
        rows = await session.scalars(
            select(AuditEntry.envelope)
            .where(AuditEntry.subject == f"tasks/{task_id}")
            .order_by(AuditEntry.seq)
        )
        return list(rows)


async def test_submit_answers_at_once_and_the_worker_stores_a_real_summary(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        answer = await http.post(
            "/v1/tasks", json={"type": "text.summarize", "input": {"text": TEXT, "sentences": 2}}
        )
        assert answer.status_code == 202
        task = answer.json()
        assert task["status"] == "queued" and task["url"] == f"/v1/tasks/{task['id']}"
        assert answer.headers["location"] == task["url"]
        done = await _finished(stack, http, task["url"])
        listed = (await http.get("/v1/tasks", params={"status": "succeeded"})).json()
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert done["result"]["summary"].count(".") == 2
    assert "PostgreSQL" in done["result"]["summary"]
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    assert [t["id"] for t in listed["items"]] == [task["id"]]

    async def announced() -> bool:
        types = [e["type"] for e in await _events(stack, task["id"])]
        return "capstan.task.succeeded" in types

    await stack.until(announced, what="task.succeeded in the audit log")
    types = [e["type"] for e in await _events(stack, task["id"])]
    assert types[0] == "capstan.task.queued" and types[1] == "capstan.task.started"
    assert types[-1] == "capstan.task.succeeded"


async def test_task_types_list_their_input_schemas(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        types = {t["name"]: t for t in (await http.get("/v1/task-types")).json()}
    assert {"text.summarize", "text.keywords", "text.language", "documents.enrich"} <= set(types)
    assert "text" in types["text.summarize"]["input_schema"]["properties"]


async def test_invalid_type_or_input_is_422_and_nothing_is_queued(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        unknown = await http.post("/v1/tasks", json={"type": "nope", "input": {}})
        bad = await http.post(
            "/v1/tasks", json={"type": "text.summarize", "input": {"sentences": 0}}
        )
        extra = await http.post(
            "/v1/tasks", json={"type": "text.language", "input": {"text": "x"}, "oops": 1}
        )
    assert unknown.status_code == 422 and "unknown task type" in unknown.json()["detail"]
    assert bad.status_code == 422 and bad.json()["detail"].startswith("input.")
    assert extra.status_code == 422
    async with stack.container.db() as session:
        count = await session.scalar(
            select(func.count()).select_from(Task).where(Task.tenant_id == tenant.id)
        )
    assert count == 0


async def test_the_same_idempotency_key_returns_the_same_task(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    body = {
        "type": "text.language",
        "input": {"text": "Bonjour tout le monde"},
        "idempotency_key": "k-1",
    }
    async with stack.api.client(tenant.key) as http:
        answers = await asyncio.gather(*(http.post("/v1/tasks", json=body) for _ in range(5)))
    assert {a.json()["id"] for a in answers} == {answers[0].json()["id"]}
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 4


async def test_a_flaky_handler_retries_with_growing_delays_then_succeeds(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        task = (
            await http.post(
                "/v1/tasks", json={"type": "test.fail", "input": {"times": 2}, "max_attempts": 3}
            )
        ).json()
        done = await _finished(stack, http, task["url"])
    assert (done["status"], done["attempts"]) == ("succeeded", 3)
    assert done["result"] == {"succeeded_on_attempt": 3}

    async def retried_twice() -> bool:
        return [e["type"] for e in await _events(stack, task["id"])].count(
            "capstan.task.retrying"
        ) == 2

    await stack.until(retried_twice, what="two task.retrying events")
    retries = [e for e in await _events(stack, task["id"]) if e["type"] == "capstan.task.retrying"]
    delays = [e["data"]["retry_in_seconds"] for e in retries]
    base = stack.container.settings.task_retry_base_seconds
    # Backoff with jitter: attempt n waits between half and all of base * 2^(n-1).
    assert base / 2 <= delays[0] <= base
    assert base <= delays[1] <= 2 * base
    assert "planned failure 2 of 2" in retries[1]["data"]["error"]


async def test_a_handler_that_always_fails_ends_failed_and_dead_lettered(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        task = (
            await http.post(
                "/v1/tasks", json={"type": "test.fail", "input": {"times": 99}, "max_attempts": 2}
            )
        ).json()
        done = await _finished(stack, http, task["url"])
    assert (done["status"], done["attempts"]) == ("failed", 2)
    assert "planned failure 2 of 99" in done["error"]
    c = stack.container
    spec = task_queue_spec(c.topology, "default")

    async def dead() -> bool:
        import json

        return task["id"] in [
            json.loads(m.body)["task_id"] for m in await c.broker.dead_letters(spec)
        ]

    await stack.until(dead, what="the task's message in the dead letters")


async def test_time_limit_exceeded_fails_with_a_clear_error(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        body = {
            "type": "test.sleep",
            "input": {"seconds": 30},
            "time_limit_seconds": 0.3,
            "max_attempts": 1,
        }
        task = (await http.post("/v1/tasks", json=body)).json()
        done = await _finished(stack, http, task["url"])
    assert done["status"] == "failed"
    assert done["error"] == "time limit of 0.3 s exceeded"


async def test_cancel_a_queued_task_at_once_and_a_running_one_at_its_next_check(
    stack: Stack,
) -> None:
    tenant = await stack.api.tenant()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    async with stack.api.client(tenant.key) as http:
        queued = (
            await http.post("/v1/tasks", json={"type": "test.noop", "input": {}, "run_at": later})
        ).json()
        cancelled = await http.post(f"{queued['url']}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        again = await http.post(f"{queued['url']}/cancel")
        assert again.status_code == 409

        running = (
            await http.post("/v1/tasks", json={"type": "test.sleep", "input": {"seconds": 60}})
        ).json()

        async def started() -> bool:
            return (await http.get(running["url"])).json()["status"] == "running"

        await stack.until(started, what="the sleeper to start")
        flagged = (await http.post(f"{running['url']}/cancel")).json()
        assert flagged["status"] == "running" and flagged["cancel_requested"] is True
        done = await _finished(stack, http, running["url"], timeout=20)
    assert done["status"] == "cancelled"


async def test_enrich_updates_the_document_through_the_normal_write_path(stack: Stack) -> None:
    tenant = await stack.api.tenant()
    async with stack.api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"title": "Capstan", "body": TEXT})).json()
        await http.get(f"/v1/documents/{doc['id']}")  # cached at version 1
        task = (
            await http.post(
                "/v1/tasks", json={"type": "documents.enrich", "input": {"document_id": doc["id"]}}
            )
        ).json()
        done = await _finished(stack, http, task["url"])
        assert done["status"] == "succeeded", done["error"]
        read = (await http.get(f"/v1/documents/{doc['id']}")).json()
    enrichment = read["metadata"]["enrichment"]
    assert read["version"] == 2  # re-read after the write: the cache was invalidated
    assert enrichment["language"] == "en" and enrichment["summary"]
    assert "Redis" in enrichment["keywords"]

    async def audited() -> bool:
        async with stack.container.db() as session:
            types = list(
                await session.scalars(
                    select(AuditEntry.type).where(AuditEntry.subject == f"documents/{doc['id']}")
                )
            )
        return types == ["capstan.document.created", "capstan.document.updated"]

    await stack.until(audited, what="the enrichment in the audit log")


async def test_workers_are_listed_with_their_running_tasks(stack: Stack) -> None:
    tenant = await stack.api.tenant(admin=True)  # workers are operator information
    async with stack.api.client(tenant.key) as http:
        task = (
            await http.post("/v1/tasks", json={"type": "test.sleep", "input": {"seconds": 60}})
        ).json()
        workers: list[dict[str, Any]] = []

        async def visible() -> bool:
            nonlocal workers
            workers = (await http.get("/v1/workers")).json()
            return any(t["id"] == task["id"] for w in workers for t in w["running"])

        await stack.until(visible, what="the running task on a worker")
        await http.post(f"{task['url']}/cancel")
    [worker] = [w for w in workers if w["running"]]
    assert worker["status"] == "alive" and worker["concurrency"] >= 1
    assert worker["running"][0]["stuck"] is False


@pytest.mark.parametrize(
    "mode",
    [
        "embedded",
        pytest.param(
            "production", marks=[pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]
        ),
    ],
)
async def test_higher_priority_runs_first(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # A one-at-a-time worker, busy with a blocker while the backlog forms behind it. (Its own
    # stack only: two stacks on one database would relay each other's outbox.)
    settings = stack_settings(mode, request, tmp_path / "p").model_copy(
        update={"worker_concurrency": 1}
    )
    single = await start_stack(settings)
    try:
        tenant = await single.api.tenant()
        async with single.api.client(tenant.key) as http:
            blocker = (
                await http.post("/v1/tasks", json={"type": "test.sleep", "input": {"seconds": 1.0}})
            ).json()

            async def blocking() -> bool:
                return (await http.get(blocker["url"])).json()["status"] == "running"

            await single.until(blocking, what="the blocker to start")
            low = [
                (await http.post("/v1/tasks", json={"type": "test.noop", "input": {}})).json()
                for _ in range(3)
            ]
            high = (
                await http.post("/v1/tasks", json={"type": "test.noop", "input": {}, "priority": 9})
            ).json()
            for t in [*low, high]:
                await _finished(single, http, t["url"])
        async with single.container.db() as session:
            order = list(
                await session.scalars(
                    select(Task.id)
                    .where(Task.tenant_id == tenant.id, Task.type == "test.noop")
                    .order_by(Task.started_at)
                )
            )
        assert order[0] == high["id"], (
            "the priority-9 task should run before earlier priority-0 ones"
        )
    finally:
        await stop_stack(single)


async def test_reindex_runs_as_a_task(stack: Stack) -> None:
    tenant = await stack.api.tenant(admin=True)  # it rebuilds the index every tenant shares
    async with stack.api.client(tenant.key) as http:
        task = (
            await http.post("/v1/tasks", json={"type": "documents.reindex", "input": {}})
        ).json()
        done = await _finished(stack, http, task["url"])
    assert done["status"] == "succeeded", done["error"]
    # Embedded and PostgreSQL-only setups keep their index in the database: nothing to rebuild.
    assert "skipped" in done["result"] or done["result"]["documents"] >= 0
