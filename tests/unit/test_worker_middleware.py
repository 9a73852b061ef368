"""Worker middleware (capstan.worker.middleware): how they compose, and each one's contract.

The chain is built once; the first middleware is the outermost; hooks run only for the
middleware that override them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from capstan.db.schema import Task
from capstan.observability.metrics import Metrics
from capstan.retry import Backoff
from capstan.tasks.context import TaskCancelled, TaskContext
from capstan.worker.middleware import (
    Attempt,
    Cancellation,
    Middleware,
    Outcome,
    Retries,
    TaskMetrics,
    TimeLimit,
    compose,
    default_middleware,
    hooks,
)


def task(**fields: Any) -> Task:
    values: dict[str, Any] = {
        "id": "t1",
        "type": "x.y",
        "tenant_id": "n",
        "attempts": 1,
        "max_attempts": 3,
        "time_limit_seconds": 5.0,
        "run_at": datetime.now(UTC) - timedelta(seconds=2),
        "request_id": None,
    }
    return Task(**{**values, **fields})


def context() -> TaskContext:
    async def report(_fraction: float, _message: str | None) -> None:
        pass

    return TaskContext(
        task_id="t1",
        task_type="x.y",
        tenant_id="n",
        attempt=1,
        max_attempts=3,
        request_id=None,
        report_progress=report,
        cancel_requested=lambda: False,
    )


class Tracing(Middleware):
    def __init__(self, name: str, trace: list[str]) -> None:
        self.name = name
        self.trace = trace

    def wrap(self, attempt: Attempt) -> Attempt:
        async def traced(t: Task, ctx: TaskContext) -> Outcome:
            self.trace.append(f"{self.name} in")
            outcome = await attempt(t, ctx)
            self.trace.append(f"{self.name} out")
            return outcome

        return traced


class OnlyDecides(Middleware):
    def decide(self, task: Task, outcome: Outcome) -> None:
        outcome.retry_in = 1.0


async def test_the_first_middleware_is_the_outermost() -> None:
    trace: list[str] = []

    async def handler(t: Task, ctx: TaskContext) -> Outcome:
        trace.append("handler")
        return Outcome("succeeded", 1)

    chain = compose([Tracing("a", trace), Tracing("b", trace)], handler)
    assert (await chain(task(), context())).value == 1
    assert trace == ["a in", "b in", "handler", "b out", "a out"]


def test_hooks_are_only_those_a_middleware_overrides() -> None:
    only = OnlyDecides()
    stack = [Tracing("a", []), only]
    assert hooks(stack, "decide") == [only.decide]
    assert hooks(stack, "after_claim") == []
    assert compose([only], _succeed) is _succeed  # no wrap, no frame


async def _succeed(t: Task, ctx: TaskContext) -> Outcome:
    return Outcome("succeeded")


async def test_cancellation_and_time_limit_turn_exceptions_into_outcomes() -> None:
    async def cancelled(t: Task, ctx: TaskContext) -> Outcome:
        raise TaskCancelled("stop")

    async def slow(t: Task, ctx: TaskContext) -> Outcome:
        await asyncio.Event().wait()  # never set: only the limit ends it
        raise AssertionError

    chain = compose([Cancellation(), TimeLimit()], cancelled)
    assert (await chain(task(), context())).status == "cancelled"
    limited = await compose([Cancellation(), TimeLimit()], slow)(
        task(time_limit_seconds=0.05), context()
    )
    assert (limited.status, limited.error) == ("error", "time limit of 0.05 s exceeded")


@pytest.mark.parametrize(("attempts", "retried"), [(1, True), (2, True), (3, False)])
def test_retries_back_off_while_attempts_are_left(attempts: int, retried: bool) -> None:
    retries = Retries(Backoff(2.0, 60.0, jitter="none"))
    outcome = Outcome("error", error="boom")
    retries.decide(task(attempts=attempts), outcome)
    assert outcome.retry_in == (2.0 * 2 ** (attempts - 1) if retried else None)
    succeeded = Outcome("succeeded")
    retries.decide(task(attempts=1), succeeded)
    assert succeeded.retry_in is None


async def test_metrics_count_the_running_attempt_and_its_outcome() -> None:
    metrics = Metrics()
    m = TaskMetrics(metrics)
    seen: list[float] = []

    async def handler(t: Task, ctx: TaskContext) -> Outcome:
        seen.append(metrics.tasks_running._value.get())
        return Outcome("succeeded", elapsed=0.5)

    t = task()
    m.after_claim(t, datetime.now(UTC))
    outcome = await m.wrap(handler)(t, context())
    m.after_finish(t, outcome, "succeeded")
    assert seen == [1.0] and metrics.tasks_running._value.get() == 0.0
    sample = metrics.registry.get_sample_value
    assert sample("capstan_tasks_total", {"type": "x.y", "state": "running"}) == 1
    assert sample("capstan_tasks_total", {"type": "x.y", "state": "succeeded"}) == 1
    assert sample("capstan_task_duration_seconds_sum", {"type": "x.y"}) == 0.5
    assert (sample("capstan_task_queue_wait_seconds_sum", {"type": "x.y"}) or 0) >= 2


def test_the_default_stack_is_in_the_documented_order() -> None:
    stack = default_middleware(Metrics(), Backoff(1.0))
    assert [type(m).__name__ for m in stack] == [
        "TaskMetrics",
        "RequestContext",
        "Retries",
        "Cancellation",
        "TimeLimit",
    ]
