"""Idempotency keys: a key names one request; reusing it for a different one is a conflict.

Like the IETF Idempotency-Key draft (section 2.6), a retried request gets the first answer,
while the same key with a different body is a client bug that must not pass silently.
"""

from __future__ import annotations

from capstan.db.schema import Task
from capstan.tasks.schemas import TaskSubmit


def differences(task: Task, body: TaskSubmit) -> list[str]:
    """The fields of `body` that differ from the task first submitted with its key."""
    differing = []
    if body.type != task.type:
        differing.append("type")
    if body.input != task.input:
        differing.append("input")
    if body.priority != task.priority:
        differing.append("priority")
    # Fields left out took defaults at the first submission; only stated ones must agree.
    optional = {
        "max_attempts": (body.max_attempts, task.max_attempts),
        "time_limit_seconds": (body.time_limit_seconds, task.time_limit_seconds),
        "queue": (body.queue, task.queue),
        "run_at": (body.run_at, task.run_at),
    }
    differing.extend(name for name, (sent, kept) in optional.items() if sent not in (None, kept))
    return differing
