"""The embedder subscriber: each document event → one `embeddings.document` task, staged in
the subscriber's own transaction (with its processed_events row; the events waiting in the
queue share one), so the document write itself pays nothing for embeddings. On PostgreSQL the
events waiting in the queue are staged in ONE statement (capstan.tasks.staging.stage_many):
the idempotency key makes it idempotent by itself, so no processed_events row is written.

Dedup: the task's idempotency key is `embeddings.document:<id>:<version>[:deleted]`, so a
replayed or duplicated event submits nothing new; and a task whose document has moved on to a
newer version does nothing (embeddings/pipeline.py), so a burst of updates is embedded once,
at the latest version.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.fastpath import FastPath
from capstan.db.unit import call_after_commit
from capstan.events.envelope import Event
from capstan.settings import Settings
from capstan.subscribers.runtime import ApplyBatch, Outcome
from capstan.tasks.handlers.embeddings import TYPE
from capstan.tasks.registry import TaskRegistry
from capstan.tasks.staging import Staged, stage_many, stage_task


class EmbedderSubscriber:
    name: ClassVar[str] = "embedder"
    patterns: ClassVar[tuple[str, ...]] = ("document.*",)
    ordered: ClassVar[bool] = False
    # What waits in the queue is staged in one transaction (runtime.py): one commit per
    # batch, not per document event.
    batched: ClassVar[bool] = True

    def __init__(
        self,
        registry: TaskRegistry,
        settings: Settings,
        fast: FastPath | None = None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        """`wake()` after a commit that staged tasks: their events and dispatch messages wait
        in the outbox (Container.wake_relays)."""
        self._registry = registry
        self._settings = settings
        self._fast = fast
        self._wake = wake
        # Embeddings off: every event is ignored without a transaction (runtime.py's
        # idempotent path), so the subscriber costs next to nothing.
        self.apply_idempotent: Callable[[Event], Awaitable[Outcome | None]] | None = (
            None if TYPE in registry else self._ignore
        )
        self.apply_batch: ApplyBatch | None = (
            self._apply_fast if fast is not None and TYPE in registry else None
        )

    async def _ignore(self, event: Event) -> Outcome | None:
        return None

    async def _apply_fast(self, events: list[Event]) -> list[tuple[Outcome | None, bool]]:
        assert self._fast is not None
        created = await stage_many(
            self._fast, self._registry, self._settings, TYPE, [_staged(e) for e in events]
        )
        if created:
            self._wake()
        # Duplicates stage nothing (the idempotency key); they are not told apart here.
        return [(None, True)] * len(events)

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        if TYPE not in self._registry:  # embeddings turned off: nothing to submit
            return None
        staged = _staged(event)
        task = await stage_task(
            session,
            self._registry,
            self._settings,
            tenant_id=staged.tenant_id,
            type=TYPE,
            input=staged.input,
            idempotency_key=staged.idempotency_key,
        )
        if task is not None:
            call_after_commit(session, self._wake)
        return None


def _staged(event: Event) -> Staged:
    """The task a document event asks for, keyed by document version (and deletion)."""
    doc_id = str(event.data["id"])
    version = int(event.data.get("version", 0))
    deleted = event.routing_key == "document.deleted"
    key = f"{TYPE}:{doc_id}:{version}" + (":deleted" if deleted else "")
    return Staged(event.tenant_id, {"document_id": doc_id, "version": version}, key)
