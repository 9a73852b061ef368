"""Cache-aside for documents: check the cache, read the database on a miss, fill with a version.

Invariants (tests/integration/test_cache_race.py checks them under concurrency):
- once a write is acknowledged, no read returns an older version: writers invalidate after
  commit with a tombstone, and fills carrying an older version are refused by the cache;
- concurrent misses on one key in this process cost one database read (single flight);
- the cache being down degrades reads to the database, never to an error; invalidations that
  could not be delivered are retried before this process trusts the cache again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from capstan.cache.port import CachedEntry, CacheUnavailable, VersionedCache
from capstan.observability.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Loaded:
    """What the database said: the serialized document and its version."""

    version: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ReadResult:
    loaded: Loaded | None
    cache: str  # "hit" | "miss" | "bypass" | "degraded" (cache down)


def document_key(tenant_id: str, doc_id: str) -> str:
    """The cache key; shared with the Node gateway (docs/contracts/cache.md)."""
    return f"capstan:{tenant_id}:doc:{doc_id}"


class CacheAside:
    def __init__(
        self, cache: VersionedCache, metrics: Metrics, *, ttl_seconds: int, name: str = "documents"
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._ttl = ttl_seconds
        self._name = name
        self._inflight: dict[str, asyncio.Future[Loaded | None]] = {}
        self._pending: dict[str, int] = {}  # key -> version of invalidations not yet delivered
        self._counters: dict[str, Counter] = {}  # result -> its labelled counter (labels() is slow)

    async def read(
        self, key: str, load: Callable[[], Awaitable[Loaded | None]], *, bypass: bool = False
    ) -> ReadResult:
        """The value for `key`, from the cache when possible, else from `load`."""
        if bypass:
            self._count("bypass")
            return ReadResult(await load(), "bypass")
        usable = await self._flush_pending()
        if usable:
            try:
                entry = await self._cache.get(key)
            except CacheUnavailable:
                usable = False
            else:
                if entry is not None:
                    self._count("hit")
                    return ReadResult(Loaded(entry.version, entry.payload), "hit")
        if not usable:
            self._count("degraded")
            return ReadResult(await load(), "degraded")
        self._count("miss")
        return ReadResult(await self._load_once(key, load), "miss")

    @property
    def trusted(self) -> bool:
        """False while an invalidation is undelivered: the cache must not be read until then.

        A caller that fetches an entry itself (see `hit`) checks this *before* its fetch: an
        entry fetched while an invalidation was pending may be the very one it should remove.
        """
        return not self._pending

    def hit(self, entry: CachedEntry) -> Loaded:
        """Serve an entry the caller fetched itself (with the rate limit, in one round trip)
        after `trusted` said yes; anything else (a miss, the cache down) goes through `read`."""
        self._count("hit")
        return Loaded(entry.version, entry.payload)

    async def _load_once(
        self, key: str, load: Callable[[], Awaitable[Loaded | None]]
    ) -> Loaded | None:
        waiting = self._inflight.get(key)
        if waiting is not None:
            self._metrics.db_reads_coalesced.labels(self._name).inc()
            return await asyncio.shield(waiting)
        future: asyncio.Future[Loaded | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            # A load that just finished filled the cache before it stopped taking followers:
            # look once more before going to the database.
            entry = await self._recheck(key)
            if entry is None:
                self._metrics.cache_loads.labels(self._name).inc()
            loaded = entry if entry is not None else await load()
            if loaded is not None and entry is None:
                await self._fill(key, loaded)
        except BaseException as exc:
            future.set_exception(exc)
            # Mark retrieved so a future nobody awaited does not log "never retrieved".
            future.exception()
            raise
        else:
            future.set_result(loaded)
            return loaded
        finally:
            # An invalidation may have detached this load already (see `invalidate`).
            if self._inflight.get(key) is future:
                del self._inflight[key]

    async def _recheck(self, key: str) -> Loaded | None:
        try:
            entry = await self._cache.get(key)
        except CacheUnavailable:
            return None
        return None if entry is None else Loaded(entry.version, entry.payload)

    async def _fill(self, key: str, loaded: Loaded) -> None:
        try:
            stored = await self._cache.fill(key, loaded.version, loaded.payload, self._ttl)
        except CacheUnavailable:
            return
        self._metrics.cache_fills.labels(self._name, "stored" if stored else "refused").inc()

    async def invalidate(self, key: str, version: int) -> None:
        """Call after the write committed; `version` is the new (or deleted + 1) version."""
        # A load that started before the commit may return the old row: readers arriving
        # from now on must not join it.
        self._inflight.pop(key, None)
        try:
            await self._cache.invalidate(key, version, self._ttl)
        except CacheUnavailable:
            self._pending[key] = max(version, self._pending.get(key, 0))
            self._metrics.cache_invalidations.labels(self._name, "deferred").inc()
            log.warning("cache invalidation deferred: cache unavailable", extra={"key": key})
        else:
            self._metrics.cache_invalidations.labels(self._name, "ok").inc()

    async def _flush_pending(self) -> bool:
        """Deliver deferred invalidations; False while any is still undelivered."""
        while self._pending:
            key, version = next(iter(self._pending.items()))
            try:
                await self._cache.invalidate(key, version, self._ttl)
            except CacheUnavailable:
                return False
            if self._pending.get(key) == version:
                del self._pending[key]
            self._metrics.cache_invalidations.labels(self._name, "ok").inc()
        return True

    def _count(self, result: str) -> None:
        counter = self._counters.get(result)
        if counter is None:
            counter = self._metrics.cache_requests.labels(self._name, result)
            self._counters[result] = counter
        counter.inc()
