"""Redis down or hung: reads keep answering from PostgreSQL; when it is back, the cache is used
again without a restart, and nothing stale is served from it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, RedisProcess, production_settings, start_api

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _until_cache_says(http: httpx.AsyncClient, url: str, wanted: str) -> httpx.Response:
    """Poll (bounded) until X-Cache is `wanted`: the breaker retries Redis after a pause."""
    for _ in range(100):
        answer = await http.get(url)
        assert answer.status_code == 200
        if answer.headers["x-cache"] == wanted:
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"X-Cache never became {wanted}")


async def _start(postgres_url: str, redis: RedisProcess, tmp_path: Path) -> Api:
    settings = production_settings(postgres_url, redis.url, tmp_path).model_copy(
        update={"cache_retry_seconds": 0.2, "cache_timeout_seconds": 0.3}
    )
    return await start_api(settings)


async def test_redis_stopped_mid_test_then_back(
    postgres_url: str, redis_process: RedisProcess, tmp_path: Path
) -> None:
    api = await _start(postgres_url, redis_process, tmp_path)
    try:
        tenant = await api.tenant()
        async with api.client(tenant.key) as http:
            doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
            url = f"/v1/documents/{doc['id']}"
            await http.get(url)
            assert (await http.get(url)).headers["x-cache"] == "hit"

            redis_process.stop()
            down = await http.get(url)
            assert (down.status_code, down.headers["x-cache"]) == (200, "degraded")
            assert down.json()["version"] == 1
            patched = await http.patch(url, json={"body": "v2"})
            assert patched.status_code == 200
            assert (await http.get(url)).json()["version"] == 2
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["status"] == "degraded"
            assert ready.json()["checks"]["cache"]["status"] == "down"
            # Sessions live in Redis: with it down they are refused clearly, not with a 500.
            assert (await http.post("/v1/sessions")).status_code == 503

            redis_process.start()
            await _until_cache_says(http, url, "miss")
            back = await http.get(url)
            assert (back.headers["x-cache"], back.json()["version"]) == ("hit", 2)
            assert (await http.get("/readyz")).json()["checks"]["cache"]["status"] == "up"
    finally:
        await api.container.close()


async def test_redis_hung_keeps_its_stale_entry_but_it_is_never_served(
    postgres_url: str, redis_process: RedisProcess, tmp_path: Path
) -> None:
    """A paused Redis still holds v1 when it resumes: the invalidation deferred during the
    pause must land before this instance trusts the cache again."""
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
                patched = await http.patch(url, json={"body": "v2"})
                assert patched.status_code == 200 and patched.json()["version"] == 2
                slow = await http.get(url)
                assert (slow.status_code, slow.json()["version"]) == (200, 2)
            finally:
                os.kill(pid, signal.SIGCONT)

            for _ in range(30):
                answer = await http.get(url)
                assert answer.json()["version"] == 2, "a stale cache entry was served"
                await asyncio.sleep(0.05)
            assert (await _until_cache_says(http, url, "hit")).json()["version"] == 2
    finally:
        await api.container.close()
