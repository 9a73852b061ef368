"""The Redis Pub/Sub signal bus: `PUBLISH capstan:{tenant_id}:signals <json>`.

Publishing goes through the shared RedisLink (its breaker: while Redis is down a signal costs
no timeout, it is dropped and counted). Pub/Sub is fire and forget by design: a signal
published while nobody listens is gone, which is what ephemeral means here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

from capstan.cache.connect import redis_from_url
from capstan.cache.port import CacheUnavailable
from capstan.cache.redis import RedisLink
from capstan.observability.metrics import Metrics
from capstan.signals.port import MalformedSignal, Signal, SignalStream, channel

log = logging.getLogger(__name__)

STREAM_SIZE = 1000
SUBSCRIBE_TIMEOUT_SECONDS = 5.0


class RedisSignals:
    def __init__(self, link: RedisLink, url: str, metrics: Metrics) -> None:
        self._link = link
        self._url = url
        self._metrics = metrics

    async def publish(self, signal: Signal) -> bool:
        key = signal.routing_key
        payload = signal.encode()
        try:
            await self._link.call(lambda c: c.publish(channel(signal.tenant_id), payload))
        except CacheUnavailable:
            self._metrics.signals_dropped.labels(key, "unavailable").inc()
            return False
        except Exception as exc:  # a signal must never fail the work that emits it
            # The error in the message too: a test's captured log prints messages only.
            log.warning("signal dropped: %r", exc, extra={"type": signal.type, "error": repr(exc)})
            self._metrics.signals_dropped.labels(key, "error").inc()
            return False
        self._metrics.signals_published.labels(key).inc()
        return True

    @asynccontextmanager
    async def subscribe(self, tenant_id: str) -> AsyncIterator[SignalStream]:
        # A connection of its own without a read timeout: a subscriber waits for as long as
        # nothing is published, which the shared client's 0.5 s timeout would call an outage.
        client = redis_from_url(self._url)  # a Sentinel URL: the primary of the moment
        pubsub = client.pubsub()
        reader: asyncio.Task[None] | None = None
        try:
            await pubsub.subscribe(channel(tenant_id))
            # Confirmed: from here on every PUBLISH to the channel reaches this connection.
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
                while True:
                    msg = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_SECONDS)
                    if msg is not None and msg["type"] == "subscribe":
                        break
            stream = SignalStream(STREAM_SIZE)
            reader = asyncio.create_task(self._read(pubsub, stream))
            yield stream
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

    async def _read(self, pubsub: aioredis.client.PubSub, stream: SignalStream) -> None:
        async for msg in pubsub.listen():
            if msg["type"] != "message":
                continue
            try:
                signal = Signal.decode(msg["data"])
            except MalformedSignal:
                log.warning("malformed signal ignored", extra={"channel": msg["channel"]})
                continue
            if not stream.offer(signal):
                self._metrics.signals_dropped.labels(signal.routing_key, "slow_subscriber").inc()

    async def close(self) -> None:
        """Nothing of its own to close: the shared link is closed by the container."""
