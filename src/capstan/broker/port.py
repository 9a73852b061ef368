"""The broker port. The events and tasks issues extend it with publish and consume."""

from __future__ import annotations

from typing import Protocol


class BrokerUnavailable(Exception):
    """The broker cannot be reached."""


class Broker(Protocol):
    async def connect(self) -> None:
        """Start connecting; must not fail when the broker is down (it reconnects)."""
        ...

    async def ping(self) -> None:
        """Raise BrokerUnavailable unless a live connection exists."""
        ...

    async def close(self) -> None: ...
