"""Cache-aside for documents: check the cache, read the database on a miss, fill with a version.

Invariants (tests/integration/test_cache_race.py checks them under concurrency):
- once a write is acknowledged, no read returns an older version: writers invalidate after
  commit with a tombstone, and fills carrying an older version are refused by the cache;
- concurrent misses on one key in this process cost one database read (single flight);
- the cache being down degrades reads to the database, never to an error. A write whose
  invalidation could not be delivered bumps the durable cache generation before it is
  acknowledged (capstan.cache.generation); after any failure to reach the cache, this process
  installs the database's generation there before it trusts the cache again, so no instance
  serves an entry filled before that write (tests/gateway/test_cache_generation.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from capstan.cache.generation import GenerationStore
from capstan.cache.port import CachedEntry, CacheUnavailable, VersionedCache
from capstan.observability.metrics import Metrics

log = logging.getLogger(__name__)

# While the cache is unreachable, requests try to sync at most this often (each try reads the
# generation from the database).
SYNC_RETRY_SECONDS = 0.5


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
        self,
        cache: VersionedCache,
        metrics: Metrics,
        generations: GenerationStore,
        *,
        ttl_seconds: int,
        name: str = "documents",
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._generations = generations
        self._ttl = ttl_seconds
        self._name = name
        self._inflight: dict[str, asyncio.Future[Loaded | None]] = {}
        # True once this process has installed the database's generation in the cache, and
        # since then has not failed to reach it. Starts False: a new process syncs first.
        self._synced = False
        self._losses = 0  # counts `lost()`: an install that overlapped one does not count
        self._sync_lock = asyncio.Lock()
        self._retry_at = 0.0  # after a failed sync, requests wait this long before the next
        self._counters: dict[str, Counter] = {}  # result -> its labelled counter (labels() is slow)

    async def read(
        self, key: str, load: Callable[[], Awaitable[Loaded | None]], *, bypass: bool = False
    ) -> ReadResult:
        """The value for `key`, from the cache when possible, else from `load`."""
        if bypass:
            self._count("bypass")
            return ReadResult(await load(), "bypass")
        generation = None
        if await self.sync():
            try:
                got = await self._cache.get(key)
            except CacheUnavailable:
                self.lost()
            else:
                if got.entry is not None:
                    self._count("hit")
                    return ReadResult(Loaded(got.entry.version, got.entry.payload), "hit")
                if got.generation is None:
                    self.lost()  # flushed or new: install it before serving anything
                generation = got.generation
        if generation is None:
            self._count("degraded")
            return ReadResult(await load(), "degraded")
        self._count("miss")
        return ReadResult(await self._load_once(key, load, generation), "miss")

    @property
    def trusted(self) -> bool:
        """False until this process has synced the generation since it last failed to reach
        the cache: an entry must not be served until then.

        A caller that fetches an entry itself (see `hit`) checks this *before* its fetch, and
        calls `lost` when its fetch fails or finds no generation.
        """
        return self._synced

    def hit(self, entry: CachedEntry) -> Loaded:
        """Serve an entry the caller fetched itself (with the rate limit, in one round trip)
        after `trusted` said yes; anything else (a miss, the cache down) goes through `read`."""
        self._count("hit")
        return Loaded(entry.version, entry.payload)

    def lost(self) -> None:
        """The cache could not be reached (or had no generation): sync before trusting it."""
        self._losses += 1
        if self._synced:
            self._synced = False
            self._metrics.cache_generation_syncs.labels(self._name, "lost").inc()

    async def sync(self) -> bool:
        """Install the database's generation in the cache unless done since the last failure;
        False while the cache cannot be reached."""
        if self._synced:
            return True
        if time.monotonic() < self._retry_at:
            return False
        async with self._sync_lock:
            if self._synced:
                return True
            if time.monotonic() < self._retry_at:
                return False
            return await self._install()

    async def _install(self) -> bool:
        # A loss while this runs may come with a bump this database read missed (see
        # `invalidate`): then this install proves nothing, and the next one must run.
        losses = self._losses
        generation = await self._generations.current()
        try:
            held = await self._cache.install_generation(generation)
        except CacheUnavailable:
            self._synced = False
            self._retry_at = time.monotonic() + SYNC_RETRY_SECONDS
            self._metrics.cache_generation_syncs.labels(self._name, "failed").inc()
            return False
        if held > generation:  # Redis is ahead (a restored database): the next bump must pass it
            await self._generations.catch_up(held)
        self._metrics.cache_generation_syncs.labels(self._name, "installed").inc()
        if self._losses != losses:
            return False
        self._synced = True
        self._retry_at = 0.0
        return True

    async def watch(self, stopping: asyncio.Event, every_seconds: float) -> None:
        """Every `every_seconds`, install the database's generation (so a bump by a process
        that cannot reach the cache takes effect within that time) and, by reaching the
        cache, notice an outage even while no request comes."""
        while not stopping.is_set():
            try:
                async with self._sync_lock:
                    await self._install()
            except Exception as exc:  # the database down: requests will say so; keep going
                log.warning("cache generation poll failed", extra={"error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), every_seconds)

    async def _load_once(
        self, key: str, load: Callable[[], Awaitable[Loaded | None]], generation: int
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
                await self._fill(key, loaded, generation)
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
            got = await self._cache.get(key)
        except CacheUnavailable:
            self.lost()
            return None
        return None if got.entry is None else Loaded(got.entry.version, got.entry.payload)

    async def _fill(self, key: str, loaded: Loaded, generation: int) -> None:
        try:
            stored = await self._cache.fill(
                key, loaded.version, loaded.payload, self._ttl, generation
            )
        except CacheUnavailable:
            self.lost()
            return
        self._metrics.cache_fills.labels(self._name, "stored" if stored else "refused").inc()

    async def invalidate(self, key: str, version: int) -> None:
        """Call after the write committed, before acknowledging it; `version` is the new (or
        deleted + 1) version. When the cache cannot take the tombstone, bumps the durable
        generation instead (raising if the database cannot take that either)."""
        # A load that started before the commit may return the old row: readers arriving
        # from now on must not join it.
        self._inflight.pop(key, None)
        try:
            await self._cache.invalidate(key, version, self._ttl)
        except CacheUnavailable:
            # Bump, then mark lost: an install that read the generation before the bump
            # committed overlaps the loss, so it cannot mark this process synced.
            try:
                generation = await self._generations.bump()
            finally:
                self.lost()
            self._metrics.cache_invalidations.labels(self._name, "deferred").inc()
            log.warning(
                "cache invalidation missed: generation bumped",
                extra={"key": key, "generation": generation},
            )
        else:
            self._metrics.cache_invalidations.labels(self._name, "ok").inc()

    def _count(self, result: str) -> None:
        counter = self._counters.get(result)
        if counter is None:
            counter = self._metrics.cache_requests.labels(self._name, result)
            self._counters[result] = counter
        counter.inc()
