"""The document cache's durable generation (docs/contracts/cache.md, "Generations").

An invalidation that cannot reach Redis must not live only in the memory of the process that
tried it: the writer bumps this row before it acknowledges the write, and every process (API
instances, the gateway) installs the row's value into Redis before trusting the cache again
after any failure of its own, and every `cache_generation_poll_seconds` anyway. Entries filled
under an older generation are misses from then on. The row is read on those occasions only,
never on a cache hit.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.db.schema import CacheGeneration

ROW = 1


class GenerationStore(Protocol):
    async def current(self) -> int: ...

    async def bump(self) -> int:
        """A new generation, committed; every entry filled before it becomes stale."""
        ...

    async def catch_up(self, generation: int) -> None:
        """Raise the stored generation to at least `generation` (what Redis holds), so that
        the next bump goes beyond it."""
        ...


class Generations:
    """The row in the database (table cache_generation)."""

    def __init__(self, db: async_sessionmaker[AsyncSession]) -> None:
        self._db = db

    async def current(self) -> int:
        async with self._db() as session:
            value = await session.scalar(
                select(CacheGeneration.generation).where(CacheGeneration.id == ROW)
            )
        return int(value) if value is not None else 1

    async def bump(self) -> int:
        """A new generation, committed; every entry filled before it becomes stale."""
        async with self._db.begin() as session:
            value = await session.scalar(
                update(CacheGeneration)
                .where(CacheGeneration.id == ROW)
                .values(generation=CacheGeneration.generation + 1)
                .returning(CacheGeneration.generation)
            )
        if value is None:
            raise RuntimeError("the cache_generation row is missing: run `capstan migrate`")
        return int(value)

    async def catch_up(self, generation: int) -> None:
        async with self._db.begin() as session:
            await session.execute(
                update(CacheGeneration)
                .where(CacheGeneration.id == ROW, CacheGeneration.generation < generation)
                .values(generation=generation)
            )
