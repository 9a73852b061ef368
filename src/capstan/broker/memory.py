"""The in-process broker used by `capstan dev` (one process, so always reachable)."""

from __future__ import annotations


class MemoryBroker:
    async def connect(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
