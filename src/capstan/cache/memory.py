"""In-process adapters for embedded mode (one process, so memory is the shared state)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from capstan.cache.gcra import gcra
from capstan.cache.port import CachedEntry, CacheRead, LimitedRead, RateDecision, Session


@dataclass(slots=True)
class _Slot:
    version: int
    payload: bytes | None  # None is a tombstone
    expires_at: float
    generation: int | None = None


class MemoryCache:
    """A bounded LRU with the same version and generation rules as the Redis adapter."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._max_entries = max_entries
        self._generation: int | None = None

    def _live(self, key: str) -> _Slot | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires_at <= time.monotonic():
            del self._slots[key]
            return None
        self._slots.move_to_end(key)
        return slot

    def _store(self, key: str, slot: _Slot) -> None:
        self._slots[key] = slot
        self._slots.move_to_end(key)
        while len(self._slots) > self._max_entries:
            self._slots.popitem(last=False)

    def _current(self, slot: _Slot | None) -> bool:
        return (
            slot is not None
            and slot.payload is not None
            and self._generation is not None
            and slot.generation == self._generation
        )

    async def get(self, key: str) -> CacheRead:
        slot = self._live(key)
        if slot is None or slot.payload is None or not self._current(slot):
            return CacheRead(None, self._generation)
        return CacheRead(CachedEntry(slot.version, slot.payload), self._generation)

    async def fill(
        self, key: str, version: int, payload: bytes, ttl_seconds: int, generation: int
    ) -> bool:
        if self._generation is None or generation != self._generation:
            return False
        slot = self._live(key)
        if slot is not None and (
            slot.version > version or (slot.version == version and self._current(slot))
        ):
            return False
        expires_at = time.monotonic() + ttl_seconds
        self._store(key, _Slot(version, payload, expires_at, generation))
        return True

    async def install_generation(self, generation: int) -> int:
        self._generation = max(generation, self._generation or 0)
        return self._generation

    async def invalidate(self, key: str, version: int, ttl_seconds: int) -> None:
        slot = self._live(key)
        newest = max(version, slot.version) if slot is not None else version
        self._store(key, _Slot(newest, None, time.monotonic() + ttl_seconds))

    async def ping(self) -> None:
        return None


class MemorySessionStore:
    def __init__(self) -> None:
        self._sessions: dict[str, tuple[Session, float]] = {}
        self._by_key: dict[str, set[str]] = {}  # key id → its sessions' token hashes

    async def put(self, token_hash: str, session: Session, ttl_seconds: int) -> None:
        self._sessions[token_hash] = (session, time.monotonic() + ttl_seconds)

    async def get(self, token_hash: str) -> Session | None:
        found = self._sessions.get(token_hash)
        if found is None:
            return None
        session, expires_at = found
        if expires_at <= time.monotonic():
            del self._sessions[token_hash]
            return None
        return session

    async def delete(self, token_hash: str) -> bool:
        return self._sessions.pop(token_hash, None) is not None

    # --- per-key index (issue 14) ---
    async def index_for_key(self, key_id: str, token_hash: str, ttl_seconds: int) -> None:
        hashes = self._by_key.setdefault(key_id, set())
        if len(hashes) >= 1024:  # forget sessions that expired since: bounded per key
            hashes.intersection_update(self._sessions)
        hashes.add(token_hash)

    async def delete_for_key(self, key_id: str) -> int:
        hashes = self._by_key.pop(key_id, set())
        return sum(self._sessions.pop(h, None) is not None for h in hashes)


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    async def hit(self, key: str, rate_per_minute: int, burst: int) -> RateDecision:
        now = time.monotonic()
        decision, new_tat = gcra(self._tat.get(key, now), now, rate_per_minute, burst)
        if decision.allowed:
            self._tat[key] = new_tat
        return decision


class MemoryRateLimitedReader:
    """The limiter's and the cache's own calls: in one process there is no round trip to save."""

    def __init__(self, limiter: MemoryRateLimiter, cache: MemoryCache) -> None:
        self._limiter = limiter
        self._cache = cache

    async def hit_and_get(
        self, rate_key: str, rate_per_minute: int, burst: int, cache_key: str
    ) -> LimitedRead:
        decision = await self._limiter.hit(rate_key, rate_per_minute, burst)
        if not decision.allowed:
            return LimitedRead(decision, None)
        read = await self._cache.get(cache_key)
        return LimitedRead(decision, read.entry, read.generation)
