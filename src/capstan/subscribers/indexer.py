"""The indexer subscriber: the hook the search issue fills. For now it records what it would
index (a metric per action and a debug log line) so the event path is complete and measured."""

from __future__ import annotations

import logging
from typing import ClassVar

from sqlalchemy.ext.asyncio import AsyncSession

from capstan.events.envelope import Event
from capstan.observability.metrics import Metrics
from capstan.subscribers.runtime import Outcome

log = logging.getLogger(__name__)


class IndexerSubscriber:
    name: ClassVar[str] = "indexer"
    patterns: ClassVar[tuple[str, ...]] = ("document.*",)
    ordered: ClassVar[bool] = False

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        action = event.routing_key.split(".", 1)[1]
        self._metrics.indexer_pending.labels(action).inc()
        log.debug(
            "would index",
            extra={"document": event.data.get("id"), "version": event.data.get("version")},
        )
        return None
