"""Task types: a name, a Pydantic input model and an async handler. Applications add theirs
through the `capstan.tasks` entry-point group: each entry point is `register(registry)`
(plugin API v1, docs/tasks.md). Built-in handlers that need services get them from their own
`register(registry, services)`, which the composition root calls (capstan.container)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from capstan.errors import InvalidInput

if TYPE_CHECKING:
    from capstan.tasks.context import TaskContext

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "capstan.tasks"

Handler = Callable[[Any, "TaskContext"], Awaitable[Any]]
# Run at submit time with the validated input and the tenant id: raise a CapstanError to
# refuse the task there and then (e.g. a document that does not exist) instead of failing
# every attempt later. Services it needs come from its registration, like the handler's.
Check = Callable[[Any, str], Awaitable[None]]


@dataclass(frozen=True)
class TaskType:
    name: str
    input_model: type[BaseModel]
    handler: Handler
    description: str
    queue: str = "default"
    max_attempts: int | None = None
    time_limit_seconds: float | None = None
    # Operator work (e.g. rebuilding the shared search index): needs an admin API key.
    admin_only: bool = False
    check: Check | None = None


class TaskRegistry:
    def __init__(self) -> None:
        self._types: dict[str, TaskType] = {}

    def register(self, task_type: TaskType) -> None:
        if task_type.name in self._types:
            raise ValueError(f"task type {task_type.name!r} is registered twice")
        if task_type.check is not None and _positional(task_type.check) == 3:
            # Before plugin API v1 a check took (input, container, tenant_id): refuse it at
            # load time (logged) rather than fail every submit.
            raise ValueError(
                f"task type {task_type.name!r}: check(input, container, tenant_id) was replaced "
                "by check(input, tenant_id) in task plugin API v1 (docs/tasks.md)"
            )
        self._types[task_type.name] = task_type

    def get(self, name: str) -> TaskType:
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(sorted(self._types))
            raise InvalidInput(
                f"unknown task type {name!r}; known: {known}", field="type"
            ) from None

    def __iter__(self) -> Iterator[TaskType]:
        return iter(sorted(self._types.values(), key=lambda t: t.name))

    def __contains__(self, name: object) -> bool:
        return name in self._types


def _positional(fn: Callable[..., Any]) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


async def check_submit(registry: TaskRegistry, tenant_id: str, body: Any) -> None:
    """The type's submit-time check, if it has one (input errors are left to submit())."""
    if body.type not in registry:
        return
    task_type = registry.get(body.type)
    if task_type.check is None:
        return
    try:
        data = task_type.input_model.model_validate(body.input)
    except ValueError:
        return  # TaskService.submit reports input errors, field by field
    await task_type.check(data, tenant_id)


def load_plugins(registry: TaskRegistry) -> None:
    """Register the task types of every installed `capstan.tasks` entry point; a plugin that
    fails to load is logged with its error and left out."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()(registry)
        except Exception:
            log.exception("task plugin failed to load", extra={"plugin": entry.name})
