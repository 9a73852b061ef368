"""The VersionedCache, SessionStore and RateLimiter contracts, run against every adapter."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from capstan.cache.memory import (
    MemoryCache,
    MemoryRateLimitedReader,
    MemoryRateLimiter,
    MemorySessionStore,
)
from capstan.cache.port import (
    CachedEntry,
    CacheRead,
    RateLimitedReader,
    RateLimiter,
    Session,
    SessionStore,
    VersionedCache,
)

ADAPTERS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=ADAPTERS)
async def adapters(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    if request.param == "memory":
        memory_cache, memory_limiter = MemoryCache(), MemoryRateLimiter()
        yield {
            "cache": memory_cache,
            "sessions": MemorySessionStore(),
            "limiter": memory_limiter,
            "reader": MemoryRateLimitedReader(memory_limiter, memory_cache),
        }
        return
    from capstan.cache.redis import (
        RedisCache,
        RedisLink,
        RedisRateLimitedReader,
        RedisRateLimiter,
        RedisSessionStore,
    )

    link = RedisLink(request.getfixturevalue("redis_url"))
    yield {
        "cache": RedisCache(link),
        "sessions": RedisSessionStore(link),
        "limiter": RedisRateLimiter(link),
        "reader": RedisRateLimitedReader(link),
    }
    await link.close()


@pytest.fixture
def cache(adapters: dict[str, Any]) -> VersionedCache:
    return adapters["cache"]  # type: ignore[no-any-return]


@pytest.fixture
async def gen(adapters: dict[str, Any]) -> int:
    """The generation the cache holds (a shared Redis may hold one already)."""
    cache: VersionedCache = adapters["cache"]
    return await cache.install_generation(1)


@pytest.fixture
def key() -> str:
    return f"capstan:test:{uuid.uuid4().hex}"


async def test_a_missing_key_is_a_miss(cache: VersionedCache, key: str) -> None:
    assert (await cache.get(key)).entry is None


async def test_a_fill_is_read_back_with_its_version(
    cache: VersionedCache, key: str, gen: int
) -> None:
    assert await cache.fill(key, 3, b'{"v":3}', 60, gen)
    entry = (await cache.get(key)).entry
    assert entry is not None and (entry.version, entry.payload) == (3, b'{"v":3}')


async def test_an_older_fill_never_replaces_a_newer_entry(
    cache: VersionedCache, key: str, gen: int
) -> None:
    await cache.fill(key, 5, b"five", 60, gen)
    assert not await cache.fill(key, 4, b"four", 60, gen)
    entry = (await cache.get(key)).entry
    assert entry is not None and entry.version == 5


async def test_invalidation_leaves_a_tombstone_that_refuses_older_fills(
    cache: VersionedCache, key: str, gen: int
) -> None:
    await cache.fill(key, 1, b"one", 60, gen)
    await cache.invalidate(key, 2, 60)
    assert (await cache.get(key)).entry is None
    # A reader that loaded version 1 before the write committed tries to fill now.
    assert not await cache.fill(key, 1, b"one", 60, gen)
    assert (await cache.get(key)).entry is None
    # A reader that loaded the new version may fill.
    assert await cache.fill(key, 2, b"two", 60, gen)
    entry = (await cache.get(key)).entry
    assert entry is not None and entry.payload == b"two"


async def test_invalidating_an_absent_key_still_guards_it(
    cache: VersionedCache, key: str, gen: int
) -> None:
    await cache.invalidate(key, 7, 60)
    assert not await cache.fill(key, 6, b"six", 60, gen)
    assert await cache.fill(key, 7, b"seven", 60, gen)


async def test_an_older_invalidation_does_not_lower_the_guard(
    cache: VersionedCache, key: str, gen: int
) -> None:
    await cache.invalidate(key, 9, 60)
    await cache.invalidate(key, 4, 60)
    assert not await cache.fill(key, 8, b"eight", 60, gen)


async def test_entries_expire(cache: VersionedCache, key: str, gen: int) -> None:
    await cache.fill(key, 1, b"one", 1, gen)
    await asyncio.sleep(1.2)
    assert (await cache.get(key)).entry is None


# --- Generations: an invalidation that never arrived is covered by a newer generation -------


async def test_a_new_generation_makes_older_entries_misses(
    cache: VersionedCache, key: str, gen: int
) -> None:
    assert await cache.fill(key, 3, b"three", 60, gen)
    assert await cache.install_generation(gen + 1) == gen + 1
    assert await cache.get(key) == CacheRead(None, gen + 1)
    # The same version may be filled again under the new generation (nothing newer is known).
    assert await cache.fill(key, 3, b"three", 60, gen + 1)
    assert await cache.get(key) == CacheRead(CachedEntry(3, b"three"), gen + 1)


async def test_a_fill_under_a_generation_that_moved_on_is_refused(
    cache: VersionedCache, key: str, gen: int
) -> None:
    before = await cache.get(key)  # a reader misses, then reads the database...
    assert before == CacheRead(None, gen)
    await cache.install_generation(gen + 1)  # ...while a missed invalidation is made up for
    assert not await cache.fill(key, 1, b"old", 60, gen)
    assert (await cache.get(key)).entry is None


async def test_a_generation_never_goes_back(cache: VersionedCache, gen: int) -> None:
    assert await cache.install_generation(gen + 2) == gen + 2
    assert await cache.install_generation(gen + 1) == gen + 2


async def test_without_a_generation_nothing_is_served_or_filled(key: str) -> None:
    """A new (or flushed) cache: nothing is trusted until a process installs the generation.
    (A shared Redis has one already: tests/integration/test_document_read_redis.py flushes a
    Redis of its own for this case.)"""
    cache = MemoryCache()
    assert await cache.get(key) == CacheRead(None, None)
    assert not await cache.fill(key, 1, b"one", 60, 1)
    assert await cache.install_generation(1) == 1
    assert await cache.fill(key, 1, b"one", 60, 1)


async def test_the_combined_read_reports_the_generation_and_skips_older_entries(
    adapters: dict[str, Any], key: str, gen: int
) -> None:
    reader: RateLimitedReader = adapters["reader"]
    cache: VersionedCache = adapters["cache"]
    name = uuid.uuid4().hex
    await cache.fill(key, 2, b"two", 60, gen)
    got = await reader.hit_and_get(name, 600, 100, key)
    assert (got.entry, got.generation) == (CachedEntry(2, b"two"), gen)
    await cache.install_generation(gen + 1)
    got = await reader.hit_and_get(name, 600, 100, key)
    assert (got.entry, got.generation) == (None, gen + 1)


async def test_a_session_is_stored_read_and_revoked(adapters: dict[str, Any]) -> None:
    store: SessionStore = adapters["sessions"]
    token_hash = uuid.uuid4().hex
    await store.put(token_hash, Session("tenant-1", "key-1", 1700000000.5), 60)
    assert await store.get(token_hash) == Session("tenant-1", "key-1", 1700000000.5)
    assert await store.delete(token_hash)
    assert await store.get(token_hash) is None
    assert not await store.delete(token_hash)


async def test_deleting_a_keys_sessions_leaves_other_keys_sessions(
    adapters: dict[str, Any],
) -> None:
    store: SessionStore = adapters["sessions"]
    key, other = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    mine = [uuid.uuid4().hex for _ in range(3)]
    theirs = uuid.uuid4().hex
    for token_hash in mine:
        await store.put(token_hash, Session("t", key, 0.0), 60)
        await store.index_for_key(key, token_hash, 60)
    await store.put(theirs, Session("t", other, 0.0), 60)
    await store.index_for_key(other, theirs, 60)
    await store.delete(mine[0])  # closed by its holder already

    assert await store.delete_for_key(key) == 2
    assert [await store.get(h) for h in mine] == [None, None, None]
    assert await store.get(theirs) == Session("t", other, 0.0)
    assert await store.delete_for_key(key) == 0


async def test_a_session_expires(adapters: dict[str, Any]) -> None:
    store: SessionStore = adapters["sessions"]
    token_hash = uuid.uuid4().hex
    await store.put(token_hash, Session("t", "k", 0.0), 1)
    await asyncio.sleep(1.2)
    assert await store.get(token_hash) is None


async def test_the_limiter_allows_the_burst_then_refuses_with_retry_after(
    adapters: dict[str, Any],
) -> None:
    limiter: RateLimiter = adapters["limiter"]
    name = uuid.uuid4().hex
    decisions = [await limiter.hit(name, rate_per_minute=6, burst=3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert 0 < decisions[3].retry_after <= 10.0


async def test_remaining_counts_down_one_by_one_however_close_the_hits(
    adapters: dict[str, Any],
) -> None:
    """Hundreds of hits in the same few milliseconds (pipelined on Redis): each allowed hit
    reports one less remaining, never the same number twice. (The stored arrival time once
    lost its microseconds to Lua's 14-digit `tostring`, and a hit right after another read a
    time rounded up into its future: two hits said the same `remaining`.)"""
    limiter: RateLimiter = adapters["limiter"]
    reader: RateLimitedReader = adapters["reader"]
    doc = f"capstan:test:{uuid.uuid4().hex}"
    burst = 400
    alone, combined = uuid.uuid4().hex, uuid.uuid4().hex
    by_limiter: list[Any] = []
    by_reader: list[Any] = []
    for _ in range(burst // 40):  # in waves the client's connection pool can hold
        by_limiter += await asyncio.gather(*(limiter.hit(alone, 1, burst) for _ in range(40)))
        by_reader += await asyncio.gather(
            *(reader.hit_and_get(combined, 1, burst, doc) for _ in range(40))
        )
    for decisions in (by_limiter, [r.decision for r in by_reader]):
        assert all(d.allowed for d in decisions)
        assert sorted(d.remaining for d in decisions) == list(range(burst))


async def test_limits_are_per_key(adapters: dict[str, Any]) -> None:
    limiter: RateLimiter = adapters["limiter"]
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    assert (await limiter.hit(a, 60, 1)).allowed
    assert not (await limiter.hit(a, 60, 1)).allowed
    assert (await limiter.hit(b, 60, 1)).allowed


# --- RateLimitedReader: the limiter's decision and the cache's read, in one call ----------


async def test_the_combined_read_decides_like_the_limiter(adapters: dict[str, Any]) -> None:
    reader: RateLimitedReader = adapters["reader"]
    limiter: RateLimiter = adapters["limiter"]
    alone, combined = uuid.uuid4().hex, uuid.uuid4().hex
    doc = f"capstan:test:{uuid.uuid4().hex}"
    by_limiter = [await limiter.hit(alone, rate_per_minute=6, burst=3) for _ in range(4)]
    by_reader = [(await reader.hit_and_get(combined, 6, 3, doc)).decision for _ in range(4)]
    assert [(d.allowed, d.remaining) for d in by_reader] == [
        (d.allowed, d.remaining) for d in by_limiter
    ]
    assert [d.allowed for d in by_reader] == [True, True, True, False]
    assert 0 < by_reader[3].retry_after <= 10.0


async def test_the_combined_read_spends_the_same_budget_as_the_limiter(
    adapters: dict[str, Any],
) -> None:
    """Both paths of one API key draw on one cell: a key cannot double its rate by mixing."""
    reader: RateLimitedReader = adapters["reader"]
    limiter: RateLimiter = adapters["limiter"]
    name, doc = uuid.uuid4().hex, f"capstan:test:{uuid.uuid4().hex}"
    assert (await limiter.hit(name, 6, 3)).remaining == 2
    assert (await reader.hit_and_get(name, 6, 3, doc)).decision.remaining == 1
    assert (await limiter.hit(name, 6, 3)).remaining == 0
    assert not (await reader.hit_and_get(name, 6, 3, doc)).decision.allowed
    assert not (await limiter.hit(name, 6, 3)).allowed


async def test_the_combined_read_sees_hits_misses_and_tombstones(
    adapters: dict[str, Any], key: str, gen: int
) -> None:
    reader: RateLimitedReader = adapters["reader"]
    cache: VersionedCache = adapters["cache"]
    name = uuid.uuid4().hex
    assert (await reader.hit_and_get(name, 600, 100, key)).entry is None  # missing
    await cache.fill(key, 4, b'{"v":4}', 60, gen)
    got = await reader.hit_and_get(name, 600, 100, key)
    assert got.decision.allowed and got.entry == (await cache.get(key)).entry
    assert got.entry is not None and (got.entry.version, got.entry.payload) == (4, b'{"v":4}')
    await cache.invalidate(key, 5, 60)
    assert (await reader.hit_and_get(name, 600, 100, key)).entry is None  # tombstone


async def test_concurrent_combined_reads_are_each_decided_exactly(
    adapters: dict[str, Any], key: str, gen: int
) -> None:
    """Fifty at once (the Redis adapter sends them pipelined): exactly the burst is allowed,
    and every allowed call reads its own key's entry."""
    reader: RateLimitedReader = adapters["reader"]
    other = f"capstan:test:{uuid.uuid4().hex}"
    await adapters["cache"].fill(key, 1, b"one", 60, gen)
    await adapters["cache"].fill(other, 2, b"two", 60, gen)
    name = uuid.uuid4().hex
    reads = await asyncio.gather(
        *(reader.hit_and_get(name, 1, 10, key if n % 2 else other) for n in range(50))
    )
    allowed = [(n, r) for n, r in enumerate(reads) if r.decision.allowed]
    assert len(allowed) == 10
    for n, read in allowed:
        assert read.entry is not None
        assert read.entry.payload == (b"one" if n % 2 else b"two")
    assert sorted(r.decision.remaining for _, r in allowed) == list(range(10))


async def test_a_refused_combined_read_returns_no_entry(
    adapters: dict[str, Any], key: str, gen: int
) -> None:
    reader: RateLimitedReader = adapters["reader"]
    await adapters["cache"].fill(key, 1, b"one", 60, gen)
    name = uuid.uuid4().hex
    assert (await reader.hit_and_get(name, 60, 1, key)).entry is not None
    refused = await reader.hit_and_get(name, 60, 1, key)
    assert (refused.decision.allowed, refused.entry) == (False, None)


@pytest.mark.redis
async def test_scripts_survive_a_redis_that_forgot_them(redis_url: str, key: str) -> None:
    """A restarted (or SCRIPT FLUSHed) Redis has no scripts: the adapters load them again."""
    from capstan.cache.redis import RedisCache, RedisLink, RedisRateLimitedReader, RedisRateLimiter

    link = RedisLink(redis_url)
    try:
        cache, limiter = RedisCache(link), RedisRateLimiter(link)
        reader = RedisRateLimitedReader(link)
        await link.client.script_flush()
        gen = await cache.install_generation(1)
        await link.client.script_flush()
        assert await cache.fill(key, 1, b"v1", 60, gen)
        assert (await cache.get(key)).entry is not None
        await link.client.script_flush()
        await cache.invalidate(key, 2, 60)
        await link.client.script_flush()
        assert (await limiter.hit(uuid.uuid4().hex, 60, 1)).allowed
        await link.client.script_flush()
        await link.client.script_flush()
        assert (await reader.hit_and_get(uuid.uuid4().hex, 60, 1, key)).entry is None
        await link.client.script_flush()
        assert (await cache.get(key)).generation == gen
    finally:
        await link.close()
