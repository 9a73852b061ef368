"""Redis Sentinel: `redis+sentinel://` URLs, and an API that follows a failover without a
restart (cache, sessions and signals keep working, no stale read after an acknowledged write);
the gateway likewise (cache and signals)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from capstan.cache.connect import SentinelAddress, parse_sentinel_url
from capstan.signals.port import SignalBus, task_progress
from tests.conftest import (
    production_settings,
    stack_settings,
    start_api,
    start_stack,
    stop_stack,
)
from tests.servers import SentinelGroup, started


def test_a_sentinel_url_names_sentinels_service_database_and_passwords() -> None:
    address = parse_sentinel_url(
        "redis+sentinel://:s3cret@10.0.0.1:26379,[::1]:26380/capstan/2?sentinel_password=x"
    )
    assert address == SentinelAddress(
        sentinels=[("10.0.0.1", 26379), ("::1", 26380)],
        service="capstan",
        db=2,
        username=None,
        password="s3cret",
        sentinel_password="x",
        ssl=False,
    )
    assert parse_sentinel_url("redis+sentinel://h:1/svc").db == 0


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel:///capstan/0",  # no sentinel
        "redis+sentinel://h:1",  # no service
        "redis+sentinel://h:1/capstan/zero",
        "redis+sentinel://h/capstan",  # no port
        "redis+sentinel://h:1/a/0/extra",
    ],
)
def test_a_malformed_sentinel_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    servers = started(SentinelGroup)
    yield servers
    servers.stop()


async def until(condition: object, what: str, timeout: float = 60.0) -> None:
    """Poll a sync or async condition, bounded (a failed wait names `what`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def published_until(
    bus: SignalBus, tenant_id: str, received: Callable[[], Awaitable[bool]], what: str
) -> None:
    """Publish progress signals until `received` says one arrived (signals published while a
    subscriber reconnects are gone by design, so one publish may not be enough), bounded."""

    async def once() -> bool:
        await bus.publish(task_progress(tenant_id, "t-1", 0.5, None, source="capstan-test"))
        return await received()

    await until(once, what)


async def python_signal_arrives(bus: SignalBus, tenant_id: str) -> None:
    """A fresh subscription over the bus's URL (Sentinel: the primary of the moment) gets one."""
    async with bus.subscribe(tenant_id) as stream:

        async def received() -> bool:
            try:
                signal = await asyncio.wait_for(stream.next(), 0.5)
            except TimeoutError:
                return False
            return signal.tenant_id == tenant_id

        await published_until(bus, tenant_id, received, "a signal through the Sentinel URL")


@pytest.mark.postgres
@pytest.mark.redis
async def test_the_api_follows_a_sentinel_failover(
    group: SentinelGroup, postgres_url: str, tmp_path: Path
) -> None:
    settings = production_settings(postgres_url, group.url(), tmp_path).model_copy(
        update={"cache_retry_seconds": 0.2}
    )
    api = await start_api(settings)
    try:
        tenant = await api.tenant()
        async with api.client(tenant.key) as http:
            # Given a cached document and a session, both in the Sentinel-managed primary
            doc = (await http.post("/v1/documents", json={"body": "v1"})).json()
            url = f"/v1/documents/{doc['id']}"
            await http.get(url)
            assert (await http.get(url)).headers["x-cache"] == "hit"
            session = (await http.post("/v1/sessions")).json()["token"]
            await python_signal_arrives(api.container.signals, tenant.id)
            # (Redis replicates asynchronously: make sure the replica has it all first.)
            assert group.primary.command("WAIT", "1", "10000") == "1"

            # When the primary dies and the Sentinels promote the replica
            group.primary.kill()
            await until(lambda: group.master_port() == group.replica.port, "the promotion")

            # Then writes are acknowledged and never read back older, through the cache
            patched = await http.patch(url, json={"body": "v2"})
            assert patched.status_code == 200 and patched.json()["version"] == 2
            seen: list[tuple[int, str]] = []

            async def cached_again() -> bool:
                answer = await http.get(url)
                seen.append((answer.json()["version"], answer.headers["x-cache"]))
                return answer.headers["x-cache"] == "hit"

            await until(cached_again, "a cache hit on the promoted primary")
            assert {version for version, _ in seen} == {2}
            # And sessions, old and new, keep working
            async with api.client(session) as by_session:
                assert (await by_session.get(url)).status_code == 200
            assert (await http.post("/v1/sessions")).status_code == 201
            # And signals (Pub/Sub) run on the promoted primary
            await python_signal_arrives(api.container.signals, tenant.id)
        assert group.replica.command("ROLE").startswith("master")
    finally:
        await api.container.close()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_the_gateway_follows_a_sentinel_failover(
    group: SentinelGroup, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from tests.gateway.conftest import start_gateway, stop_gateway
    from tests.gateway.test_cross_service import ws_event, ws_subscribe

    settings = stack_settings("production", request, tmp_path).model_copy(
        update={"cache_url": group.url(), "cache_retry_seconds": 0.2}
    )
    stack = await start_stack(settings, ["cache"], worker=False)
    gateway = await start_gateway(stack, tmp_path / "gateway.log")
    try:
        tenant = await stack.api.tenant()
        headers = {"Authorization": f"Bearer {tenant.key}"}
        ws, _, _ = await ws_subscribe(gateway.ws_url(), tenant.key, ["task.*"])

        async def ws_signal() -> bool:
            try:
                msg = await ws_event(ws, timeout=0.5)
            except TimeoutError:
                return False
            return bool(msg.get("ephemeral")) and msg["tenantid"] == tenant.id

        signals = stack.api.container.signals
        async with stack.api.client(tenant.key) as api, httpx.AsyncClient(headers=headers) as gw:
            # Given signals reaching a WebSocket client through the Sentinel-named primary
            await published_until(signals, tenant.id, ws_signal, "a signal at the gateway")
            # Given a document the gateway serves from the cache
            doc = (await api.post("/v1/documents", json={"body": "v1"})).json()
            url = f"/v1/documents/{doc['id']}"
            await gw.get(gateway.url + url)
            assert (await gw.get(gateway.url + url)).headers["x-cache"] == "hit"
            assert group.primary.command("WAIT", "1", "10000") == "1"

            # When the primary dies and the replica is promoted, and the API updates it
            group.primary.kill()
            await until(lambda: group.master_port() == group.replica.port, "the promotion")
            patched = await api.patch(url, json={"body": "v2"})
            assert patched.status_code == 200

            # Then the gateway never serves version 1 again, and caches on the new primary
            seen: list[tuple[int, str]] = []

            async def cached_again() -> bool:
                answer = await gw.get(gateway.url + url)
                seen.append((answer.json()["version"], answer.headers["x-cache"]))
                return answer.headers["x-cache"] == "hit"

            await until(cached_again, "a gateway cache hit on the promoted primary")
            assert {version for version, _ in seen} == {2}
            # And its signal listener follows the promotion too
            await published_until(signals, tenant.id, ws_signal, "a signal after the promotion")
        await ws.close()
    finally:
        await stop_gateway(gateway)
        await stop_stack(stack)


async def test_tools_taking_one_server_get_the_current_primary(group: SentinelGroup) -> None:
    from capstan.cache.connect import primary_url

    assert await primary_url(group.url(2)) == f"redis://127.0.0.1:{group.primary.port}/2"
    assert await primary_url("redis://h:1/0") == "redis://h:1/0"
    group.primary.kill()
    await until(lambda: group.master_port() == group.replica.port, "the promotion")
    assert await primary_url(group.url(2)) == f"redis://127.0.0.1:{group.replica.port}/2"
