"""A worker built with its own middleware list, on a real stack: the hooks run around real
attempts in order, and leaving `Retries` out fails a task on its first error."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from capstan.composition import build_worker, worker_middleware
from capstan.db.schema import Task
from capstan.tasks.context import TaskContext
from capstan.worker.middleware import Attempt, Middleware, Outcome, Retries
from tests.conftest import stack_settings, start_stack, stop_stack


class Journal(Middleware):
    """Writes down every hook it sees, per task type."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def after_claim(self, task: Task, now: datetime) -> None:
        self.seen.append(("claimed", task.type))

    def wrap(self, attempt: Attempt) -> Attempt:
        async def journaled(task: Task, ctx: TaskContext) -> Outcome:
            self.seen.append(("attempt", task.type))
            return await attempt(task, ctx)

        return journaled

    def decide(self, task: Task, outcome: Outcome) -> None:
        self.seen.append((f"decide {outcome.status}", task.type))

    def after_finish(self, task: Task, outcome: Outcome, state: str) -> None:
        self.seen.append((state, task.type))


async def test_a_worker_runs_the_middleware_it_is_given(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    stack = await start_stack(stack_settings("embedded", request, tmp_path), worker=False)
    journal = Journal()
    without_retries = [m for m in worker_middleware(stack.container) if not isinstance(m, Retries)]
    worker = build_worker(stack.container, concurrency=1, middleware=[journal, *without_retries])
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    try:
        tenant = await stack.api.tenant()
        async with stack.api.client(tenant.key) as http:
            states: dict[str, Any] = {}
            for kind, body in (("test.noop", {}), ("test.fail", {"times": 1})):
                answer = await http.post(
                    "/v1/tasks", json={"type": kind, "input": body, "max_attempts": 3}
                )
                url = answer.json()["url"]

                async def finished(url: str = url, kind: str = kind) -> bool:
                    states[kind] = (await http.get(url)).json()
                    return states[kind]["status"] in ("succeeded", "failed")

                await stack.until(finished, what=f"{kind} to finish")
        assert states["test.noop"]["status"] == "succeeded"
        # No Retries middleware: the first error is final although attempts were left.
        assert states["test.fail"]["status"] == "failed"
        assert states["test.fail"]["attempts"] == 1
        assert journal.seen == [
            ("claimed", "test.noop"),
            ("attempt", "test.noop"),
            ("decide succeeded", "test.noop"),
            ("succeeded", "test.noop"),
            ("claimed", "test.fail"),
            ("attempt", "test.fail"),
            ("decide error", "test.fail"),
            ("failed", "test.fail"),
        ]
    finally:
        stopping.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=30)
        await stop_stack(stack)
