"""The in-process signal bus (embedded mode): subscribers in this process only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from capstan.observability.metrics import Metrics
from capstan.signals.port import Signal, SignalStream

# A subscriber this far behind is too slow: newer signals are dropped for it, not buffered.
STREAM_SIZE = 1000


class MemorySignals:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._streams: dict[str, set[SignalStream]] = {}

    async def publish(self, signal: Signal) -> bool:
        key = signal.routing_key
        for stream in self._streams.get(signal.tenant_id, ()):
            if not stream.offer(signal):
                self._metrics.signals_dropped.labels(key, "slow_subscriber").inc()
        self._metrics.signals_published.labels(key).inc()
        return True

    @asynccontextmanager
    async def subscribe(self, tenant_id: str) -> AsyncIterator[SignalStream]:
        stream = SignalStream(STREAM_SIZE)
        self._streams.setdefault(tenant_id, set()).add(stream)
        try:
            yield stream
        finally:
            streams = self._streams[tenant_id]
            streams.discard(stream)
            if not streams:
                del self._streams[tenant_id]

    async def close(self) -> None:
        self._streams.clear()
