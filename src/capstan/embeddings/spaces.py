"""Embedding spaces and the re-embedding that a model change starts (migration 0009).

- The first space a process configures becomes `live` at once (nothing was embedded before).
- When the configured model (or its version, or dimension) differs from the live space, the
  configured space is recorded `building`: new writes are embedded into it (the pipeline
  always writes the configured space), and the embeddings reconciler, beside the embedder
  subscriber, re-embeds every live document into it (`rebuild`, in pages, progress in the row:
  `capstan embeddings status`), checks it has no drift, then switches: the building space
  becomes live, the old one `retired`, and its vectors are dropped from every store.
- Queries use the live space. A process can only embed a query with its configured model, so
  while a build runs, semantic and hybrid queries in processes already configured with the
  new model answer with keywords (`degraded: true`) until the switch; processes still on the
  old model keep answering semantically (a rolling deploy).
- One builder at a time across processes: a process claims the build by moving the row's
  `updated_at` forward only when it is older than CLAIM_SECONDS (compare-and-set), and keeps
  moving it while it works; a crashed builder's claim lapses and another process resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.db.schema import Document, EmbeddingSpace
from capstan.search import indexing
from capstan.search.vectors import Space

log = logging.getLogger(__name__)

CLAIM_SECONDS = 60.0
PAGE = 200


@dataclass(frozen=True, slots=True)
class SpaceRow:
    space: Space
    state: str
    done: int
    total: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.space.key,
            "model": self.space.model,
            "version": self.space.version,
            "dimension": self.space.dimension,
            "state": self.state,
            "done": self.done,
            "total": self.total,
        }


def _row(r: EmbeddingSpace) -> SpaceRow:
    return SpaceRow(Space(r.model, r.version, r.dimension), r.state, r.done, r.total)


class Spaces:
    """The spaces table; `live()` is cached for `cache_seconds` (a switch is seen that late)."""

    def __init__(self, db: async_sessionmaker[AsyncSession], *, cache_seconds: float = 2.0):
        self._db = db
        self._cache_seconds = cache_seconds
        self._live: tuple[float, Space | None] | None = None

    async def all(self) -> list[SpaceRow]:
        async with self._db() as session:
            rows = await session.scalars(select(EmbeddingSpace).order_by(EmbeddingSpace.created_at))
            return [_row(r) for r in rows]

    async def sync(self, configured: Space) -> tuple[Space, Space | None]:
        """(live, building) after recording `configured` (see the module docstring)."""
        for attempt in range(2):
            try:
                return await self._sync(configured)
            except IntegrityError:  # another process recorded it first: read theirs
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _sync(self, configured: Space) -> tuple[Space, Space | None]:
        now = datetime.now(UTC)
        async with self._db.begin() as session:
            rows = {r.key: r for r in await session.scalars(select(EmbeddingSpace))}
            live = next((r for r in rows.values() if r.state == "live"), None)
            mine = rows.get(configured.key)
            if live is None:
                if mine is None:
                    session.add(_new(configured, "live", now))
                else:
                    mine.state, mine.updated_at = "live", now
                self._live = (time.monotonic(), configured)
                return configured, None
            live_space = Space(live.model, live.version, live.dimension)
            if live.key == configured.key:
                return live_space, None
            if mine is None:
                # Backdated so the first claim succeeds at once.
                session.add(_new(configured, "building", now - timedelta(seconds=CLAIM_SECONDS)))
            elif mine.state == "retired":
                mine.state, mine.done, mine.total = "building", 0, 0
                mine.updated_at = now - timedelta(seconds=CLAIM_SECONDS)
            return live_space, configured

    async def live(self) -> Space | None:
        now = time.monotonic()
        if self._live is not None and now - self._live[0] < self._cache_seconds:
            return self._live[1]
        async with self._db() as session:
            row = await session.scalar(select(EmbeddingSpace).where(EmbeddingSpace.state == "live"))
        space = None if row is None else Space(row.model, row.version, row.dimension)
        self._live = (now, space)
        return space

    async def claim(self, space: Space) -> bool:
        """Take (or keep) the right to build `space`; False if another process holds it."""
        now = datetime.now(UTC)
        async with self._db.begin() as session:
            result = await session.execute(
                update(EmbeddingSpace)
                .where(
                    EmbeddingSpace.key == space.key,
                    EmbeddingSpace.state == "building",
                    EmbeddingSpace.updated_at < now - timedelta(seconds=CLAIM_SECONDS),
                )
                .values(updated_at=now)
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def progress(self, space: Space, done: int, total: int) -> None:
        """Record progress, which also keeps the builder's claim."""
        async with self._db.begin() as session:
            await session.execute(
                update(EmbeddingSpace)
                .where(EmbeddingSpace.key == space.key)
                .values(done=done, total=total, updated_at=datetime.now(UTC))
            )

    async def switch(self, space: Space) -> Space | None:
        """`space` live, the live one retired, in one transaction; the retired space."""
        now = datetime.now(UTC)
        async with self._db.begin() as session:
            old = await session.scalar(
                select(EmbeddingSpace).where(EmbeddingSpace.state == "live").with_for_update()
            )
            await session.execute(
                update(EmbeddingSpace)
                .where(EmbeddingSpace.key == space.key)
                .values(state="live", updated_at=now)
            )
            if old is None or old.key == space.key:
                retired = None
            else:
                old.state, old.updated_at = "retired", now
                retired = Space(old.model, old.version, old.dimension)
        self._live = (time.monotonic(), space)
        return retired


def _new(space: Space, state: str, at: datetime) -> EmbeddingSpace:
    return EmbeddingSpace(
        key=space.key,
        model=space.model,
        version=space.version,
        dimension=space.dimension,
        state=state,
        done=0,
        total=0,
        created_at=at,
        updated_at=at,
    )


Progress = Callable[[int, int], Awaitable[None]]


async def live_document_pages(
    db: async_sessionmaker[AsyncSession], page: int = PAGE
) -> tuple[int, Callable[[], Any]]:
    """(how many documents, an async iterator over their rows in id order, `page` at a time)."""
    async with db() as session:
        total = int(await session.scalar(select(func.count()).select_from(Document)) or 0)

    async def pages() -> Any:
        last: str | None = None
        while True:
            async with db() as session:
                stmt = select(Document.id).order_by(Document.id).limit(page)
                if last is not None:
                    stmt = stmt.where(Document.id > last)
                ids = list((await session.scalars(stmt)).all())
                if not ids:
                    return
                rows = await indexing.load(session, ids)
            last = ids[-1]
            yield [rows[i] for i in ids if i in rows]

    return total, pages
