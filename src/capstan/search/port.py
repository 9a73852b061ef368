"""The search port. The search issue extends it with index, delete and query."""

from __future__ import annotations

from typing import Protocol


class SearchUnavailable(Exception):
    """The full-text engine cannot be reached."""


class SearchEngine(Protocol):
    name: str

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
