"""The embedder subscriber: each document event → one `embeddings.document` task, staged in
the subscriber's own transaction (with its processed_events row; the events waiting in the
queue share one), so the document write itself pays nothing for embeddings.

Dedup: the task's idempotency key is `embeddings.document:<id>:<version>[:deleted]`, so a
replayed or duplicated event submits nothing new; and a task whose document has moved on to a
newer version does nothing (embeddings/pipeline.py), so a burst of updates is embedded once,
at the latest version.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from sqlalchemy.ext.asyncio import AsyncSession

from capstan.events.envelope import Event
from capstan.settings import Settings
from capstan.subscribers.runtime import Outcome
from capstan.tasks.handlers.embeddings import TYPE
from capstan.tasks.registry import TaskRegistry
from capstan.tasks.staging import stage_task


class EmbedderSubscriber:
    name: ClassVar[str] = "embedder"
    patterns: ClassVar[tuple[str, ...]] = ("document.*",)
    ordered: ClassVar[bool] = False
    # What waits in the queue is staged in one transaction (runtime.py): one commit per
    # batch, not per document event.
    batched: ClassVar[bool] = True

    def __init__(self, registry: TaskRegistry, settings: Settings) -> None:
        self._registry = registry
        self._settings = settings
        # Embeddings off: every event is ignored without a transaction (runtime.py's
        # idempotent path), so the subscriber costs next to nothing.
        self.apply_idempotent: Callable[[Event], Awaitable[Outcome | None]] | None = (
            None if TYPE in registry else self._ignore
        )

    async def _ignore(self, event: Event) -> Outcome | None:
        return None

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        if TYPE not in self._registry:  # embeddings turned off: nothing to submit
            return None
        doc_id = str(event.data["id"])
        version = int(event.data.get("version", 0))
        deleted = event.routing_key == "document.deleted"
        key = f"{TYPE}:{doc_id}:{version}" + (":deleted" if deleted else "")
        await stage_task(
            session,
            self._registry,
            self._settings,
            tenant_id=event.tenant_id,
            type=TYPE,
            input={"document_id": doc_id, "version": version},
            idempotency_key=key,
        )
        return None
