"""What a handler gets besides its input: progress, cancellation, effects, the stores."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from capstan.container import Container


class TaskCancelled(Exception):
    """Raised by `check_cancelled` when someone cancelled the running task."""


Effect = Callable[[AsyncSession], Awaitable[None]]


@dataclass
class TaskContext:
    task_id: str
    tenant_id: str
    attempt: int
    container: Container
    report_progress: Callable[[float, str | None], Awaitable[None]]
    cancel_requested: Callable[[], bool]
    effects: list[Effect] = field(default_factory=list)
    _last_progress: float = 0.0

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress in [0, 1]; throttled, and a cancellation point."""
        self.check_cancelled()
        now = time.monotonic()
        if fraction >= 1.0 or now - self._last_progress >= 0.25:
            self._last_progress = now
            await self.report_progress(min(max(fraction, 0.0), 1.0), message)

    def check_cancelled(self) -> None:
        """A cancellation point: raise TaskCancelled if the task was cancelled."""
        if self.cancel_requested():
            raise TaskCancelled("the task was cancelled while running")

    def add_effect(self, effect: Effect) -> None:
        """Run `effect(session)` in the transaction that records success: exactly once."""
        self.effects.append(effect)

    def effect_row(self, name: str, value: Any) -> None:
        """Record a named effect row for this task (see TaskEffect): exactly once."""
        from datetime import UTC, datetime

        from capstan.db.schema import TaskEffect

        async def write(session: AsyncSession) -> None:
            session.add(
                TaskEffect(
                    task_id=self.task_id, name=name, value=value, created_at=datetime.now(UTC)
                )
            )

        self.add_effect(write)
