"""The worker's cross-cutting concerns as middleware, in the style of dramatiq.

The worker claims a task, runs one attempt and records its outcome; everything else (metrics,
the logging context, cancellation, time limits, retries) is a small class with hooks:

- `wrap(attempt)` wraps the attempt (an async function of the task and its context that
  returns an Outcome); called once when the worker is built, so the chain costs one
  coroutine frame per wrapping middleware per task, nothing else;
- `after_claim(task, now)`, `decide(task, outcome)` (before the outcome is recorded: e.g. a
  retry), `after_finish(task, outcome, state)`: plain calls, made only for the middleware
  that override them.

The first middleware of the list is the outermost. Hooks never touch the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from capstan.db.schema import Task
from capstan.observability.context import reset_request_id, set_request_id
from capstan.observability.metrics import Metrics
from capstan.retry import Backoff
from capstan.tasks.context import Effect, TaskCancelled, TaskContext


@dataclass(slots=True)
class Outcome:
    """How one attempt ended, before it is recorded."""

    status: Literal["succeeded", "error", "cancelled"]
    value: Any = None
    error: str | None = None
    effects: list[Effect] = field(default_factory=list)
    # Set by `decide` hooks (Retries): an error with this set is retried after that long.
    retry_in: float | None = None
    elapsed: float = 0.0  # seconds the attempt ran, set by the worker


Attempt = Callable[[Task, TaskContext], Awaitable[Outcome]]


class Middleware:
    """Every hook a no-op: subclasses override the ones they need."""

    def wrap(self, attempt: Attempt) -> Attempt:
        return attempt

    def after_claim(self, task: Task, now: datetime) -> None:
        pass

    def decide(self, task: Task, outcome: Outcome) -> None:
        pass

    def after_finish(self, task: Task, outcome: Outcome, state: str) -> None:
        pass


def compose(middleware: Sequence[Middleware], attempt: Attempt) -> Attempt:
    """`attempt` wrapped by every middleware, the first one outermost."""
    for m in reversed(middleware):
        attempt = m.wrap(attempt)
    return attempt


def hooks(middleware: Sequence[Middleware], name: str) -> list[Callable[..., None]]:
    """The bound `name` hooks of the middleware that override it, in order."""
    base = getattr(Middleware, name)
    return [getattr(m, name) for m in middleware if getattr(type(m), name) is not base]


class TaskMetrics(Middleware):
    """capstan_tasks_total, capstan_task_queue_wait_seconds, capstan_tasks_running and
    capstan_task_duration_seconds."""

    def __init__(self, metrics: Metrics) -> None:
        self._tasks = metrics.tasks_total
        self._wait = metrics.task_queue_wait
        self._running = metrics.tasks_running
        self._duration = metrics.task_duration

    def after_claim(self, task: Task, now: datetime) -> None:
        self._tasks.labels(task.type, "running").inc()
        self._wait.labels(task.type).observe(max((now - task.run_at).total_seconds(), 0.0))

    def wrap(self, attempt: Attempt) -> Attempt:
        running = self._running

        async def counted(task: Task, ctx: TaskContext) -> Outcome:
            running.inc()
            try:
                return await attempt(task, ctx)
            finally:
                running.dec()

        return counted

    def after_finish(self, task: Task, outcome: Outcome, state: str) -> None:
        self._tasks.labels(task.type, state).inc()
        self._duration.labels(task.type).observe(outcome.elapsed)


class RequestContext(Middleware):
    """Log records of the attempt carry the request id of the API call that submitted it."""

    def wrap(self, attempt: Attempt) -> Attempt:
        async def with_request_id(task: Task, ctx: TaskContext) -> Outcome:
            token = set_request_id(task.request_id)
            try:
                return await attempt(task, ctx)
            finally:
                reset_request_id(token)

        return with_request_id


class Cancellation(Middleware):
    """A handler that stops at a cancellation point ends the task `cancelled`."""

    def wrap(self, attempt: Attempt) -> Attempt:
        async def cancellable(task: Task, ctx: TaskContext) -> Outcome:
            try:
                return await attempt(task, ctx)
            except TaskCancelled:
                return Outcome("cancelled", error="cancelled while running")

        return cancellable


class TimeLimit(Middleware):
    """The attempt is stopped after the task's `time_limit_seconds`: an error (retried)."""

    def wrap(self, attempt: Attempt) -> Attempt:
        async def limited(task: Task, ctx: TaskContext) -> Outcome:
            try:
                return await asyncio.wait_for(attempt(task, ctx), task.time_limit_seconds)
            except TimeoutError:
                return Outcome(
                    "error", error=f"time limit of {task.time_limit_seconds:g} s exceeded"
                )

        return limited


class Retries(Middleware):
    """A failed attempt with attempts left is retried after `backoff` (capstan.retry)."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff

    def decide(self, task: Task, outcome: Outcome) -> None:
        if outcome.status == "error" and task.attempts < task.max_attempts:
            outcome.retry_in = self.backoff.delay(task.attempts)


def default_middleware(metrics: Metrics, retry: Backoff) -> list[Middleware]:
    """The worker's middleware, outermost first."""
    return [TaskMetrics(metrics), RequestContext(), Retries(retry), Cancellation(), TimeLimit()]
