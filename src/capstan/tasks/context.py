"""What a handler gets besides its input: plugin API v1 (docs/tasks.md, "Plugin API v1").

The surface is deliberately small and stable: ids and attempt, progress, cancellation, an
effect hook (a session in the transaction that records success) and a logger. Services a
handler needs (documents, search...) come from its registration, never from the context.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy.ext.asyncio import AsyncSession

PLUGIN_API_VERSION = 1

_log = logging.getLogger("capstan.tasks.handler")


class TaskCancelled(Exception):
    """Raised by `check_cancelled` when someone cancelled the running task."""


Effect = Callable[[AsyncSession], Awaitable[None]]

# Attributes of the context before v1: asking for one fails with the way forward, so an old
# plugin fails its attempt with a clear error instead of misbehaving.
REMOVED = {
    "container": "take the services a handler needs from its registration "
    "(register(registry) builds the handler with them)",
    "report_progress": "use `await ctx.progress(fraction, message)`",
    "cancel_requested": "use `ctx.cancelled` or `ctx.check_cancelled()`",
    "effects": "use `ctx.add_effect(effect)`",
}


class TaskContext:
    """Plugin API v1: one running attempt of one task, as its handler sees it."""

    api_version: ClassVar[int] = PLUGIN_API_VERSION
    __slots__ = (
        "_cancel_requested",
        "_effects",
        "_last_progress",
        "_log",
        "_report",
        "attempt",
        "max_attempts",
        "request_id",
        "task_id",
        "task_type",
        "tenant_id",
    )

    def __init__(
        self,
        *,
        task_id: str,
        task_type: str,
        tenant_id: str,
        attempt: int,
        max_attempts: int,
        request_id: str | None,
        report_progress: Callable[[float, str | None], Awaitable[None]],
        cancel_requested: Callable[[], bool],
    ) -> None:
        self.task_id = task_id
        self.task_type = task_type
        self.tenant_id = tenant_id
        self.attempt = attempt  # 1 on the first attempt
        self.max_attempts = max_attempts
        self.request_id = request_id  # of the API request that submitted the task, if any
        self._report = report_progress
        self._cancel_requested = cancel_requested
        self._effects: list[Effect] = []
        self._last_progress = 0.0
        self._log: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry the task id, type and attempt."""
        if self._log is None:  # built on first use: most handlers never log
            self._log = logging.LoggerAdapter(
                _log, {"task": self.task_id, "task_type": self.task_type, "attempt": self.attempt}
            )
        return self._log

    @property
    def cancelled(self) -> bool:
        """Whether someone asked to cancel this task (checked without raising)."""
        return self._cancel_requested()

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress in [0, 1]; throttled, and a cancellation point."""
        self.check_cancelled()
        now = time.monotonic()
        if fraction >= 1.0 or now - self._last_progress >= 0.25:
            self._last_progress = now
            await self._report(min(max(fraction, 0.0), 1.0), message)

    def check_cancelled(self) -> None:
        """A cancellation point: raise TaskCancelled if the task was cancelled."""
        if self._cancel_requested():
            raise TaskCancelled("the task was cancelled while running")

    def add_effect(self, effect: Effect) -> None:
        """Run `effect(session)` in the transaction that records success: exactly once."""
        self._effects.append(effect)

    def effect_row(self, name: str, value: Any) -> None:
        """Record a named effect row for this task (see TaskEffect): exactly once."""
        from capstan.db.schema import TaskEffect

        async def write(session: AsyncSession) -> None:
            session.add(
                TaskEffect(
                    task_id=self.task_id, name=name, value=value, created_at=datetime.now(UTC)
                )
            )

        self.add_effect(write)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: no cost to the documented attributes.
        if name in REMOVED:
            raise AttributeError(
                f"TaskContext.{name} was removed in task plugin API v1: {REMOVED[name]} "
                "(docs/tasks.md, 'Plugin API v1')"
            )
        raise AttributeError(f"TaskContext has no attribute {name!r} (task plugin API v1)")


def pending_effects(ctx: TaskContext) -> list[Effect]:
    """The effects the handler registered (the worker's side of `add_effect`)."""
    return ctx._effects
