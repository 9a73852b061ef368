"""The cache subscriber: invalidates cached documents on every change, whoever made it
(workers, other API instances, or an API whose own invalidation could not reach Redis)."""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy.ext.asyncio import AsyncSession

from capstan.cache.port import VersionedCache
from capstan.documents.cache import document_key
from capstan.events.envelope import Event
from capstan.subscribers.runtime import Outcome


class CacheSubscriber:
    name: ClassVar[str] = "cache"
    patterns: ClassVar[tuple[str, ...]] = ("document.updated", "document.deleted")
    ordered: ClassVar[bool] = False

    def __init__(self, cache: VersionedCache, ttl_seconds: int) -> None:
        self._cache = cache
        self._ttl = ttl_seconds

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        return await self.apply_idempotent(event)

    async def apply_idempotent(self, event: Event) -> Outcome | None:
        """The runtime calls this one (subscribers/runtime.py): no transaction is needed."""
        version = int(event.data["version"])
        if event.routing_key == "document.deleted":
            version += 1
        # Idempotent and order-free: the tombstone keeps the highest version it was given.
        # CacheUnavailable propagates, so the event is retried until Redis is back.
        await self._cache.invalidate(
            document_key(event.tenant_id, event.data["id"]), version, self._ttl
        )
        return None
