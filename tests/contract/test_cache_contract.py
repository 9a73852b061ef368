"""The VersionedCache, SessionStore and RateLimiter contracts, run against every adapter."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from capstan.cache.memory import MemoryCache, MemoryRateLimiter, MemorySessionStore
from capstan.cache.port import RateLimiter, Session, SessionStore, VersionedCache

ADAPTERS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=ADAPTERS)
async def adapters(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    if request.param == "memory":
        yield {
            "cache": MemoryCache(),
            "sessions": MemorySessionStore(),
            "limiter": MemoryRateLimiter(),
        }
        return
    from capstan.cache.redis import RedisCache, RedisLink, RedisRateLimiter, RedisSessionStore

    link = RedisLink(request.getfixturevalue("redis_url"))
    yield {
        "cache": RedisCache(link),
        "sessions": RedisSessionStore(link),
        "limiter": RedisRateLimiter(link),
    }
    await link.close()


@pytest.fixture
def cache(adapters: dict[str, Any]) -> VersionedCache:
    return adapters["cache"]  # type: ignore[no-any-return]


@pytest.fixture
def key() -> str:
    return f"capstan:test:{uuid.uuid4().hex}"


async def test_a_missing_key_is_a_miss(cache: VersionedCache, key: str) -> None:
    assert await cache.get(key) is None


async def test_a_fill_is_read_back_with_its_version(cache: VersionedCache, key: str) -> None:
    assert await cache.fill(key, 3, b'{"v":3}', 60)
    entry = await cache.get(key)
    assert entry is not None and (entry.version, entry.payload) == (3, b'{"v":3}')


async def test_an_older_fill_never_replaces_a_newer_entry(cache: VersionedCache, key: str) -> None:
    await cache.fill(key, 5, b"five", 60)
    assert not await cache.fill(key, 4, b"four", 60)
    entry = await cache.get(key)
    assert entry is not None and entry.version == 5


async def test_invalidation_leaves_a_tombstone_that_refuses_older_fills(
    cache: VersionedCache, key: str
) -> None:
    await cache.fill(key, 1, b"one", 60)
    await cache.invalidate(key, 2, 60)
    assert await cache.get(key) is None
    # A reader that loaded version 1 before the write committed tries to fill now.
    assert not await cache.fill(key, 1, b"one", 60)
    assert await cache.get(key) is None
    # A reader that loaded the new version may fill.
    assert await cache.fill(key, 2, b"two", 60)
    entry = await cache.get(key)
    assert entry is not None and entry.payload == b"two"


async def test_invalidating_an_absent_key_still_guards_it(cache: VersionedCache, key: str) -> None:
    await cache.invalidate(key, 7, 60)
    assert not await cache.fill(key, 6, b"six", 60)
    assert await cache.fill(key, 7, b"seven", 60)


async def test_an_older_invalidation_does_not_lower_the_guard(
    cache: VersionedCache, key: str
) -> None:
    await cache.invalidate(key, 9, 60)
    await cache.invalidate(key, 4, 60)
    assert not await cache.fill(key, 8, b"eight", 60)


async def test_entries_expire(cache: VersionedCache, key: str) -> None:
    await cache.fill(key, 1, b"one", 1)
    await asyncio.sleep(1.2)
    assert await cache.get(key) is None


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


async def test_limits_are_per_key(adapters: dict[str, Any]) -> None:
    limiter: RateLimiter = adapters["limiter"]
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    assert (await limiter.hit(a, 60, 1)).allowed
    assert not (await limiter.hit(a, 60, 1)).allowed
    assert (await limiter.hit(b, 60, 1)).allowed


@pytest.mark.redis
async def test_scripts_survive_a_redis_that_forgot_them(redis_url: str, key: str) -> None:
    """A restarted (or SCRIPT FLUSHed) Redis has no scripts: the adapters load them again."""
    from capstan.cache.redis import RedisCache, RedisLink, RedisRateLimiter

    link = RedisLink(redis_url)
    try:
        cache, limiter = RedisCache(link), RedisRateLimiter(link)
        await link.client.script_flush()
        assert await cache.fill(key, 1, b"v1", 60)
        assert (await cache.get(key)) is not None
        await link.client.script_flush()
        await cache.invalidate(key, 2, 60)
        await link.client.script_flush()
        assert (await limiter.hit(uuid.uuid4().hex, 60, 1)).allowed
    finally:
        await link.close()
