"""Engine and sessions for a database URL; how each dialect connects is capstan.db.dialect's."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from capstan.db.dialect import dialect_for, dialect_of


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine for a `postgresql://` or `sqlite://` URL."""
    return dialect_for(url).create_engine(url, pool_size=pool_size)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    """Sessions that keep loaded attributes after commit (responses are built after it).
    Write with `async with db.begin()`, read with `async with db()`."""
    return dialect_of(engine).sessionmaker(engine)
