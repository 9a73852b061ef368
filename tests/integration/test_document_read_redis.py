"""The lean document read against a private Redis: one command per cache hit; with Redis down
or hung it fails open on the rate limit, degrades to PostgreSQL, and never trusts the cache
again before it has installed the cache generation a missed invalidation bumped."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import Api, RedisProcess, production_settings, start_api

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _start(postgres_url: str, redis: RedisProcess, tmp_path: Path) -> Api:
    settings = production_settings(postgres_url, redis.url, tmp_path).model_copy(
        update={
            "cache_retry_seconds": 0.2,
            "cache_timeout_seconds": 0.3,
            # Low enough that a limiter which failed closed would refuse these requests.
            "rate_limit_per_minute": 60,
            "rate_limit_burst": 8,
        }
    )
    return await start_api(settings)


async def _until_hit(http: httpx.AsyncClient, url: str) -> httpx.Response:
    for _ in range(100):
        answer = await http.get(url)
        if answer.headers.get("x-cache") == "hit":
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError("the cache was never used again")


async def _commands(redis: RedisProcess) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, from INFO commandstats."""
    client = aioredis.Redis.from_url(redis.url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_a_cache_hit_costs_one_redis_command(
    postgres_url: str, redis_process: RedisProcess, tmp_path: Path
) -> None:
    api = await _start(postgres_url, redis_process, tmp_path)
    try:
        tenant = await api.tenant()
        async with api.client(tenant.key) as http:
            doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
            url = f"/v1/documents/{doc['id']}"
            await http.get(url)  # the miss fills the cache (after syncing the generation)
            await http.get(url)  # the first hit loads the script into Redis
            admin = aioredis.Redis.from_url(redis_process.url)
            await admin.config_resetstat()
            await admin.aclose()
            hits = [await http.get(url) for _ in range(5)]
        assert {h.headers["x-cache"] for h in hits} == {"hit"}
        stats = await _commands(redis_process)
        # Ours: the reset and the HELLO of the client reading the stats.
        assert (stats.pop("config|resetstat"), stats.pop("hello")) == (1, 1)
        # The API's: one EVALSHA per hit; Redis also counts the commands the script runs (a
        # GET of the rate cell and one of the cache generation).
        assert stats == {"evalsha": 5, "time": 5, "get": 10, "set": 5, "hmget": 5}
    finally:
        await api.container.close()


async def test_redis_down_degrades_reads_and_refuses_sessions_clearly(
    postgres_url: str, redis_process: RedisProcess, tmp_path: Path
) -> None:
    api = await _start(postgres_url, redis_process, tmp_path)
    try:
        tenant = await api.tenant()
        async with api.client(tenant.key) as http:
            token = (await http.post("/v1/sessions")).json()["token"]
            doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
            url = f"/v1/documents/{doc['id']}"
            await http.get(url)
            assert (await http.get(url)).headers["x-cache"] == "hit"

            redis_process.stop()
            # Twelve reads: more than the burst, so the limiter must have failed open.
            answers = [await http.get(url) for _ in range(12)]
            assert {(a.status_code, a.headers["x-cache"]) for a in answers} == {(200, "degraded")}
            assert answers[-1].json() == doc and answers[-1].headers["etag"] == '"1"'
            bypass = await http.get(url, headers={"Cache-Control": "no-cache"})
            assert (bypass.status_code, bypass.headers["x-cache"]) == (200, "bypass")
        async with api.client(token) as by_session:
            refused = await by_session.get(url)
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
    finally:
        await api.container.close()


async def test_pending_invalidations_keep_the_cache_out_of_the_read(
    postgres_url: str, redis_process: RedisProcess, tmp_path: Path
) -> None:
    """Redis paused: the write's invalidation is missed (the generation is bumped instead) and
    Redis, once resumed, still holds v1. The one-command hit path must not serve it."""
    api = await _start(postgres_url, redis_process, tmp_path)
    assert redis_process.proc is not None
    pid = redis_process.proc.pid
    try:
        tenant = await api.tenant()
        async with api.client(tenant.key) as http:
            doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
            url = f"/v1/documents/{doc['id']}"
            await http.get(url)
            assert (await http.get(url)).headers["x-cache"] == "hit"

            os.kill(pid, signal.SIGSTOP)
            try:
                assert (await http.patch(url, json={"body": "v2"})).status_code == 200
                assert not api.container.documents_cache.trusted
            finally:
                os.kill(pid, signal.SIGCONT)

            # Redis answers again and still holds v1, of the generation before the bump.
            first = await http.get(url)
            assert (first.status_code, first.json()["version"]) == (200, 2)
            assert first.headers["x-cache"] != "hit"
            back = await _until_hit(http, url)
            assert back.json()["version"] == 2 and back.headers["etag"] == '"2"'
            assert api.container.documents_cache.trusted
    finally:
        await api.container.close()


async def test_a_flushed_redis_is_used_again_once_the_generation_is_installed(
    postgres_url: str, redis_process: RedisProcess, tmp_path: Path
) -> None:
    """FLUSHALL drops the cache generation with everything else: nothing can be served or
    filled until a process installs it again, which the first read that finds it missing
    makes this process do."""
    api = await _start(postgres_url, redis_process, tmp_path)
    try:
        tenant = await api.tenant()
        async with api.client(tenant.key) as http:
            doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
            url = f"/v1/documents/{doc['id']}"
            await http.get(url)
            assert (await http.get(url)).headers["x-cache"] == "hit"
            admin = aioredis.Redis.from_url(redis_process.url)
            try:
                await admin.flushall()
                back = await _until_hit(http, url)
                assert back.json()["version"] == 1
                assert await admin.get("capstan:cache:generation") is not None
            finally:
                await admin.aclose()
    finally:
        await api.container.close()
