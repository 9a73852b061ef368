"""The RabbitMQ a benchmark runs against: its URL, whether it answers, waiting for consumers, and
deleting a run's own broker namespace (`bench_<random>`) afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from capstan.bench.common import (
    SERVICES_HINT,
    Backends,
    BenchError,
    check_backends,
    err,
    redact,
    resolve_backends,
    retrying,
)


def resolve_amqp(env: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The RabbitMQ URL: CAPSTAN_BROKER_URL if it is amqp://, else CAPSTAN_TEST_AMQP_URL."""
    for var in ("CAPSTAN_BROKER_URL", "CAPSTAN_TEST_AMQP_URL"):
        url = env.get(var, "")
        if url.startswith(("amqp://", "amqps://")):
            return url, var
    raise BenchError(
        "CAPSTAN_TEST_AMQP_URL (or an amqp:// CAPSTAN_BROKER_URL) not set: the benchmark needs "
        f"a real RabbitMQ; {SERVICES_HINT}"
    )


async def check_amqp(url: str, var: str) -> str:
    """RabbitMQ's version, or BenchError if it does not answer."""
    import aio_pika

    try:
        conn = await aio_pika.connect(url, timeout=5)
    except Exception as exc:
        raise BenchError(
            f"RabbitMQ at {redact(url)} ({var}) is unreachable: "
            f"{exc or type(exc).__name__}; {SERVICES_HINT}"
        ) from exc
    try:
        props: Any = conn.transport.connection.server_properties if conn.transport else {}
        version = props.get("version", b"unknown")
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return "unknown"
    finally:
        await conn.close()


def check_servers() -> tuple[Backends, str, dict[str, str]]:
    """PostgreSQL, Redis and RabbitMQ: their URLs (the RabbitMQ one apart) and versions, or
    BenchError naming what is missing or unreachable."""
    backends = resolve_backends()
    amqp_url, amqp_var = resolve_amqp()
    versions = asyncio.run(check_backends(backends))
    versions["rabbitmq"] = asyncio.run(check_amqp(amqp_url, amqp_var))
    return backends, amqp_url, versions


async def wait_consumers(url: str, queues: list[str], timeout_s: float = 60) -> None:
    """Until every queue exists and has a consumer (the subscribers are listening)."""
    import aio_pika

    deadline = time.monotonic() + timeout_s
    conn = await aio_pika.connect(url, timeout=5)
    try:
        waiting = list(queues)
        while waiting and time.monotonic() < deadline:
            channel = await conn.channel()
            try:
                queue = await channel.declare_queue(waiting[0], passive=True)
                if queue.declaration_result.consumer_count:
                    waiting.pop(0)
                    continue
            except aio_pika.exceptions.ChannelClosed:
                pass  # not declared yet
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            await asyncio.sleep(0.2)
        if waiting:
            raise BenchError(f"no consumer on {', '.join(waiting)} within {timeout_s:g}s")
    finally:
        await conn.close()


async def delete_names(url: str, names: dict[str, list[str]]) -> list[str]:
    """Delete these queues and exchanges; the names that could not be deleted."""
    import aio_pika

    failed: list[str] = []
    conn = await aio_pika.connect(url, timeout=5)
    try:
        channel = await conn.channel()
        for queue in names["queues"]:
            try:
                await channel.queue_delete(queue)
            except Exception:
                failed.append(queue)
                channel = await conn.channel()  # an error closes the channel
        for exchange in names["exchanges"]:
            try:
                await channel.exchange_delete(exchange)
            except Exception:
                failed.append(exchange)
                channel = await conn.channel()
        await channel.close()
    finally:
        await conn.close()
    return failed


def leftovers(url: str, namespace: str) -> dict[str, list[str]] | None:
    """Queues and exchanges still under the namespace, per the management API (None if it
    does not answer). The namespace is the bench's own, so all of them are ours."""
    import httpx

    parts = urlsplit(url)
    vhost = quote(unquote(parts.path.lstrip("/")) or "/", safe="")
    auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    base = f"http://{parts.hostname or '127.0.0.1'}:15672/api"
    found: dict[str, list[str]] = {}
    try:
        for kind in ("queues", "exchanges"):
            r = httpx.get(f"{base}/{kind}/{vhost}", auth=auth, timeout=5)
            r.raise_for_status()
            found[kind] = [x["name"] for x in r.json() if x["name"].startswith(namespace + ".")]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return found


def clear_namespace(url: str, namespace: str, known: dict[str, list[str]]) -> list[str]:
    """Delete the known names of the namespace and whatever else the management API still lists
    under it (e.g. a new channel's exchange); the names left."""
    failed = asyncio.run(delete_names(url, known))
    extra = leftovers(url, namespace)
    if extra and (extra["queues"] or extra["exchanges"]):
        failed += asyncio.run(delete_names(url, extra))
    left = leftovers(url, namespace)
    return failed if left is None else left["queues"] + left["exchanges"]


def remove_namespace(
    url: str, namespace: str, known: dict[str, list[str]], *, retry_s: float = 0.0
) -> None:
    """`clear_namespace`, tried again for up to `retry_s` while any name is left (a server
    restarted under the run may still be coming back); says on stderr how it went."""

    def step() -> None:
        remaining = clear_namespace(url, namespace, known)
        if remaining:
            raise BenchError(f"names left: {remaining}")
        err.print(f"deleted broker namespace {namespace}")

    retrying(step, f"delete broker namespace {namespace}", retry_s)
