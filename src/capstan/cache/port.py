"""The key-value ports. Every adapter passes tests/contract/test_cache_contract.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class CacheUnavailable(Exception):
    """The cache backend cannot be reached; callers degrade instead of failing."""


@dataclass(frozen=True, slots=True)
class CachedEntry:
    version: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class CacheRead:
    entry: CachedEntry | None  # None when missing, a tombstone, or of an older generation
    # The cache's generation now (None: unknown until a process installs it); a fill after
    # this read passes it back, so a generation bumped meanwhile refuses that fill.
    generation: int | None


class VersionedCache(Protocol):
    """A cache whose entries carry the version of the row they copy, and the generation they
    were filled under (docs/contracts/cache.md).

    `invalidate` leaves a tombstone holding the new version, and `fill` refuses to store a
    version older than what is (or was, per the tombstone) there: a reader that loaded an old
    row before a write committed can never put it back after that write's invalidation.
    An invalidation that cannot be delivered bumps the durable generation instead
    (capstan.cache.generation); once installed here, every entry of an older generation is a
    miss, and so is everything while no generation is installed.
    """

    async def get(self, key: str) -> CacheRead: ...

    async def fill(
        self, key: str, version: int, payload: bytes, ttl_seconds: int, generation: int
    ) -> bool:
        """Store unless a newer version or tombstone is there, or the generation is no longer
        `generation` (the one `get` returned before the database read); True when stored."""
        ...

    async def invalidate(self, key: str, version: int, ttl_seconds: int) -> None:
        """Drop the entry and remember that versions below `version` are stale."""
        ...

    async def install_generation(self, generation: int) -> int:
        """Raise the cache's generation to `generation` (never lower it); the one now held."""
        ...

    async def ping(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Session:
    tenant_id: str
    key_id: str
    created_at: float


class SessionStore(Protocol):
    """Opaque session tokens, looked up by the SHA-256 of the token, with a TTL."""

    async def put(self, token_hash: str, session: Session, ttl_seconds: int) -> None: ...

    async def get(self, token_hash: str) -> Session | None: ...

    async def delete(self, token_hash: str) -> bool: ...

    # The per-key index (issue 14): revoking a key deletes every session opened with it.
    async def index_for_key(self, key_id: str, token_hash: str, ttl_seconds: int) -> None:
        """Remember that session `token_hash` belongs to `key_id` (for `delete_for_key`)."""
        ...

    async def delete_for_key(self, key_id: str) -> int:
        """Delete every session opened with `key_id`; how many there were."""
        ...


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    remaining: int
    retry_after: float  # seconds until one more request is allowed (0 when allowed)


class RateLimiter(Protocol):
    """A GCRA limiter: `rate_per_minute` sustained, bursts up to `burst` requests."""

    async def hit(self, key: str, rate_per_minute: int, burst: int) -> RateDecision: ...


@dataclass(frozen=True, slots=True)
class LimitedRead:
    decision: RateDecision
    entry: CachedEntry | None  # None when refused, missing, a tombstone or of an old generation
    generation: int | None = None  # as CacheRead's; None also when refused


class RateLimitedReader(Protocol):
    """A RateLimiter hit and then, if allowed, a VersionedCache get: one round trip on Redis.

    Decides exactly as the RateLimiter of the same backend (same cells, same clock), and reads
    exactly what that backend's VersionedCache.get would; the cached document read's hot path.
    """

    async def hit_and_get(
        self, rate_key: str, rate_per_minute: int, burst: int, cache_key: str
    ) -> LimitedRead: ...
