"""The signal bus port: ephemeral, per-tenant messages that need no durability.

Signals are not events of record: no outbox, no audit log, no `seq`, no retry. A signal that
cannot be sent is dropped and counted, and publishing never raises, so a signal can never fail
the work that emits it (docs/contracts/signals.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from capstan.ids import uuid7

TYPE_PREFIX = "capstan."
TASK_PROGRESS = "capstan.task.progress"
# What the gateway subscribes to (PSUBSCRIBE): every tenant's channel.
CHANNEL_PATTERN = "capstan:*:signals"


def channel(tenant_id: str) -> str:
    """The Pub/Sub channel of one tenant's signals."""
    return f"capstan:{tenant_id}:signals"


class MalformedSignal(ValueError):
    """A message on a signal channel is not a Capstan signal."""


@dataclass(frozen=True, slots=True)
class Signal:
    """One ephemeral message; on the wire a CloudEvents-shaped object with `"ephemeral": true`."""

    tenant_id: str
    type: str
    subject: str
    data: dict[str, Any]
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=uuid7)
    source: str = "capstan"

    @property
    def routing_key(self) -> str:
        """`<entity>.<action>`, matched by the gateway like an event's routing key."""
        return self.type.removeprefix(TYPE_PREFIX)

    def encode(self) -> bytes:
        """The wire form (docs/contracts/signals.md); the gateway forwards it as is."""
        return json.dumps(
            {
                "specversion": "1.0",
                "id": self.id,
                "source": self.source,
                "type": self.type,
                "time": self.time.isoformat().replace("+00:00", "Z"),
                "subject": self.subject,
                "datacontenttype": "application/json",
                "tenantid": self.tenant_id,
                "ephemeral": True,
                "data": self.data,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Signal:
        """Parse the wire form; MalformedSignal when it is not one."""
        try:
            env = json.loads(raw)
            return cls(
                tenant_id=str(env["tenantid"]),
                type=str(env["type"]),
                subject=str(env.get("subject") or ""),
                data=dict(env["data"]),
                time=datetime.fromisoformat(str(env["time"]).replace("Z", "+00:00")),
                id=str(env["id"]),
                source=str(env["source"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedSignal(f"not a signal: {exc!r}") from exc


def task_progress(
    tenant_id: str, task_id: str, progress: float, message: str | None, *, source: str
) -> Signal:
    """The signal of one progress tick of a running task."""
    return Signal(
        tenant_id=tenant_id,
        type=TASK_PROGRESS,
        subject=f"tasks/{task_id}",
        data={"id": task_id, "progress": progress, "message": message},
        source=source,
    )


class SignalStream:
    """The signals of one subscription, in publish order (bounded; see the adapters)."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[Signal] = asyncio.Queue(maxsize)

    def offer(self, signal: Signal) -> bool:
        """Queue without waiting; False when full (the reader is too slow: dropped)."""
        try:
            self._queue.put_nowait(signal)
        except asyncio.QueueFull:
            return False
        return True

    async def next(self) -> Signal:
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[Signal]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Signal]:
        while True:
            yield await self._queue.get()


class SignalBus(Protocol):
    """Publish and subscribe per tenant (contract: tests/contract/test_signals_contract.py)."""

    async def publish(self, signal: Signal) -> bool:
        """Send to the signal's tenant channel; False when dropped. Never raises."""
        ...

    def subscribe(self, tenant_id: str) -> AbstractAsyncContextManager[SignalStream]:
        """Receive the tenant's signals published once this has been entered."""
        ...

    async def close(self) -> None: ...
