"""Task types: a name, a Pydantic input model and an async handler. Applications add theirs
through the `capstan.tasks` entry-point group: each entry point is `register(registry)`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from capstan.errors import InvalidInput

if TYPE_CHECKING:
    from capstan.container import Container
    from capstan.embeddings.pipeline import EmbeddingPipeline
    from capstan.settings import Settings
    from capstan.tasks.context import TaskContext

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "capstan.tasks"

Handler = Callable[[Any, "TaskContext"], Awaitable[Any]]
# Run at submit time with the validated input: raise a CapstanError to refuse the task there
# and then (e.g. a document that does not exist) instead of failing every attempt later.
Check = Callable[[Any, "Container", str], Awaitable[None]]


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


async def check_submit(registry: TaskRegistry, c: Container, tenant_id: str, body: Any) -> None:
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
    await task_type.check(data, c, tenant_id)


def build_registry(
    settings: Settings, *, embeddings: EmbeddingPipeline | None = None
) -> TaskRegistry:
    """Built-in types (`embeddings.document` when given its pipeline), test types when
    enabled, then every installed plugin."""
    from capstan.tasks.handlers import documents, testing, text

    registry = TaskRegistry()
    text.register(registry)
    documents.register(registry)
    if embeddings is not None:
        from capstan.tasks.handlers import embeddings as embedding_handlers

        pipeline = embeddings
        embedding_handlers.register(registry, lambda: pipeline)
    if settings.tasks_enable_test_handlers:
        testing.register(registry)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()(registry)
        except Exception:
            log.exception("task plugin failed to load", extra={"plugin": entry.name})
    return registry
