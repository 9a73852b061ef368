"""The read-your-writes bar of the cache-aside flow, under concurrency.

Once a write is acknowledged, no later read (through any API instance) returns an older
version: not while readers fill the cache concurrently, and not across instances.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from capstan.cache.memory import MemoryCache
from capstan.cache.port import VersionedCache
from capstan.documents.cache import CacheAside, Loaded
from capstan.observability.metrics import Metrics
from tests.conftest import Api, embedded_settings, production_settings, start_api


class StubGenerations:
    """The durable generation without a database (capstan.cache.generation.GenerationStore)."""

    def __init__(self) -> None:
        self.value = 1

    async def current(self) -> int:
        return self.value

    async def bump(self) -> int:
        self.value += 1
        return self.value

    async def catch_up(self, generation: int) -> None:
        self.value = max(self.value, generation)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def versioned_cache(request: pytest.FixtureRequest) -> AsyncIterator[VersionedCache]:
    if request.param == "memory":
        yield MemoryCache()
        return
    from capstan.cache.redis import RedisCache, RedisLink

    link = RedisLink(request.getfixturevalue("redis_url"))
    yield RedisCache(link)
    await link.close()


async def test_a_reader_that_loaded_before_a_write_cannot_put_the_old_version_back(
    versioned_cache: VersionedCache,
) -> None:
    aside = CacheAside(versioned_cache, Metrics(), StubGenerations(), ttl_seconds=60)
    key = f"capstan:test:{uuid.uuid4().hex}"
    row = {"version": 1}
    loaded_old = asyncio.Event()
    write_done = asyncio.Event()

    async def slow_load() -> Loaded:
        snapshot = Loaded(row["version"], f"v{row['version']}".encode())
        loaded_old.set()
        await write_done.wait()  # the write commits and invalidates while we hold v1
        return snapshot

    async def fresh_load() -> Loaded:
        return Loaded(row["version"], f"v{row['version']}".encode())

    stale_reader = asyncio.create_task(aside.read(key, slow_load))
    await loaded_old.wait()
    row["version"] = 2
    await aside.invalidate(key, 2)  # ...then the write is acknowledged
    write_done.set()
    assert (await stale_reader).loaded == Loaded(1, b"v1")  # it began before the ack: fine

    after = await aside.read(key, fresh_load)
    again = await aside.read(key, fresh_load)
    assert after.loaded is not None and after.loaded.version == 2
    assert (again.cache, again.loaded) == ("hit", Loaded(2, b"v2"))


async def test_readers_arriving_after_a_write_do_not_join_an_older_load() -> None:
    aside = CacheAside(MemoryCache(), Metrics(), StubGenerations(), ttl_seconds=60)
    row = {"version": 1}
    release = asyncio.Event()

    async def slow_load() -> Loaded:
        snapshot = Loaded(row["version"], b"")
        await release.wait()
        return snapshot

    async def load() -> Loaded:
        return Loaded(row["version"], b"")

    early = asyncio.create_task(aside.read("k", slow_load))
    await asyncio.sleep(0)
    row["version"] = 2
    await aside.invalidate("k", 2)
    late = asyncio.create_task(aside.read("k", load))
    await asyncio.sleep(0)
    release.set()
    assert (await late).loaded == Loaded(2, b"")
    await early


async def _hammer(instances: list[Api], key: str, writers: int, writes: int, readers: int) -> int:
    """Concurrent PATCHes and GETs; returns how many reads were cache hits."""
    acked = 0
    hits = 0
    violations: list[str] = []
    done = asyncio.Event()
    async with instances[0].client(key) as http:
        doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
    url = f"/v1/documents/{doc['id']}"

    async def writer(n: int) -> None:
        nonlocal acked
        async with instances[n % len(instances)].client(key) as http:
            for i in range(writes):
                answer = await http.patch(url, json={"body": f"w{n}-{i}"})
                assert answer.status_code == 200, answer.text
                acked = max(acked, answer.json()["version"])

    async def reader(n: int) -> None:
        nonlocal hits
        async with instances[n % len(instances)].client(key) as http:
            while not done.is_set():
                floor = acked
                answer = await http.get(url)
                assert answer.status_code == 200, answer.text
                version = answer.json()["version"]
                hits += answer.headers["x-cache"] == "hit"
                if version < floor:
                    violations.append(f"read v{version} after v{floor} was acknowledged")
                # Clients pause between reads; back-to-back readers in the server's own loop
                # would starve the writers of CPU (an artefact of in-process clients).
                await asyncio.sleep(0.002 + random.random() / 1000)

    reading = [asyncio.create_task(reader(n)) for n in range(readers)]
    await asyncio.gather(*(writer(n) for n in range(writers)))
    done.set()
    await asyncio.gather(*reading)
    assert violations == []
    async with instances[-1].client(key) as http:
        final = (await http.get(url)).json()
    assert final["version"] == 1 + writers * writes
    return hits


async def test_no_stale_read_after_an_acknowledged_write_embedded(tmp_path: Path) -> None:
    api = await start_api(embedded_settings(tmp_path))
    try:
        tenant = await api.tenant()
        hits = await _hammer([api], tenant.key, writers=3, writes=15, readers=8)
        assert hits > 0  # the cache really was in the path
    finally:
        await api.container.close()


@pytest.mark.postgres
@pytest.mark.redis
async def test_no_stale_read_after_an_acknowledged_write_across_two_instances(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = production_settings(postgres_url, redis_url, tmp_path)
    one, two = await start_api(settings), await start_api(settings)
    try:
        tenant = await one.tenant()
        hits = await _hammer([one, two], tenant.key, writers=4, writes=25, readers=10)
        assert hits > 0
    finally:
        await one.container.close()
        await two.container.close()
