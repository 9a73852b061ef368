"""The RabbitMQ a benchmark runs against: its URL, whether it answers, waiting for consumers, and
deleting a run's own broker namespace (`bench_<random>`) afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any

from capstan_bench.common import (
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


def remove_namespace(
    url: str, namespace: str, known: dict[str, list[str]], *, retry_s: float = 0.0
) -> None:
    """Delete the run's namespace (its known names and whatever else the management API lists
    under it), tried again for up to `retry_s` while any name is left (a server restarted under
    the run may still be coming back); says on stderr how it went."""
    from capstan.broker.namespaces import Names
    from capstan.broker.namespaces import remove_namespace as remove

    names = Names(known.get("queues", []), known.get("exchanges", []))

    def step() -> None:
        remaining = asyncio.run(remove(url, namespace, known=names))
        if remaining:
            raise BenchError(f"names left: {remaining}")
        err.print(f"deleted broker namespace {namespace}")

    retrying(step, f"delete broker namespace {namespace}", retry_s)
