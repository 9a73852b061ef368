"""Zero-downtime reindex: build a new index from the database while writes continue, then
swap the read alias atomically.

1. Create `A-<ms>` with the current mappings and analyzer, and add it to the write alias:
   from then on every indexer writes each change to the old *and* the new index (dual write).
   We wait out the indexers' alias cache, so no write misses the new index after step 2 starts.
2. Backfill: stream every row from the database in id order (keyset pages) into the new index
   with external versions. A row read before a concurrent change loses to the indexer's newer
   write (version) or to its delete (tombstone), whichever order they arrive in.
3. Reconcile the new index against the database (catches anything in flight during steps 1 and 2).
4. One `_aliases` request moves the read alias and drops the old index from the write alias;
   after the cache window the old index is deleted, and a last reconcile runs.

Why dual write rather than catch-up from the outbox: outbox rows are pruned after publishing
(`outbox_retention_hours`), so a long backfill could outlive them; the write alias needs no
bookkeeping, and external versioning makes both writers commute.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.db.schema import Document
from capstan.search.elasticsearch import ElasticsearchEngine
from capstan.search.indexing import to_index_doc
from capstan.search.reconcile import ReconcileReport, reconcile

if TYPE_CHECKING:
    from capstan.search.port import SearchEngine

log = logging.getLogger(__name__)

Progress = Callable[[int, int], Awaitable[None] | None]
PAGE = 1000


@dataclass
class ReindexReport:
    old_index: str | None
    new_index: str
    documents: int
    repaired: ReconcileReport
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "old_index": self.old_index,
            "new_index": self.new_index,
            "documents": self.documents,
            "repaired": self.repaired.as_dict(),
            "seconds": round(self.seconds, 3),
        }


class ReindexUnsupported(Exception):
    """The configured search engine is the database itself: nothing to rebuild."""


async def reindex(
    engine: SearchEngine,
    db: async_sessionmaker[AsyncSession],
    progress: Progress | None = None,
    *,
    keep_old: bool = False,
) -> ReindexReport:
    """Rebuild the search index of `engine` from the database; `progress(done, total)` after
    each page. The `documents.reindex` task handler calls this."""
    if not isinstance(engine, ElasticsearchEngine):
        raise ReindexUnsupported(
            f"the search engine is {engine.name}: the database keeps it, nothing to rebuild"
        )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await engine.ensure()
    old = await engine.read_index()
    new = engine.new_index_name()
    await engine.create_index(new)
    await engine.update_aliases([{"add": {"index": new, "alias": engine.write_alias}}])
    # Every indexer re-reads the write alias within its cache window.
    await asyncio.sleep(engine.alias_cache_seconds * 2)
    log.info("reindex: backfilling", extra={"old": old, "new": new})

    try:
        done = await _backfill(db, engine, new, progress)
    except BaseException:
        # Cancelled or failed before the swap: detach and drop the half-built index, so the
        # indexers stop writing to it and a later run starts clean.
        with contextlib.suppress(Exception):
            await engine.update_aliases([{"remove": {"index": new, "alias": engine.write_alias}}])
            await engine.delete_index(new)
        raise

    await engine.client.indices.refresh(index=new)
    repaired = await reconcile(engine, db, grace_seconds=0, index=new)
    actions: list[dict[str, Any]] = [{"add": {"index": new, "alias": engine.alias}}]
    if old is not None:
        actions += [
            {"remove": {"index": old, "alias": engine.alias}},
            {"remove": {"index": old, "alias": engine.write_alias}},
        ]
    await engine.update_aliases(actions)
    log.info("reindex: alias swapped", extra={"old": old, "new": new})
    if old is not None and not keep_old:
        await asyncio.sleep(engine.alias_cache_seconds * 2)
        await engine.delete_index(old)
    await engine.client.indices.refresh(index=new)
    final = await reconcile(engine, db, grace_seconds=0, index=new)
    repaired.repaired += final.repaired
    return ReindexReport(old, new, done, repaired, loop.time() - started)


async def _backfill(
    db: async_sessionmaker[AsyncSession],
    engine: ElasticsearchEngine,
    new: str,
    progress: Progress | None,
) -> int:
    """Copy every document into the index `new`, a page at a time; returns how many."""
    async with db() as session:
        total = int((await session.execute(select(func.count(Document.id)))).scalar_one())
    done = 0
    last: str | None = None
    in_flight: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []

    async def write(batch: list[Any]) -> None:
        result = await engine.index(batch, targets=[new])
        if result.failed:
            log.warning("reindex: documents failed", extra={"count": len(result.failed)})

    while True:
        async with db() as session:
            stmt = select(Document).order_by(Document.id).limit(PAGE)
            if last is not None:
                stmt = stmt.where(Document.id > last)
            rows = list((await session.scalars(stmt)).all())
        if not rows:
            break
        last = rows[-1].id
        task = asyncio.create_task(write([to_index_doc(r) for r in rows]))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        if len(in_flight) >= 4:
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            errors.extend(e for t in finished if (e := t.exception()) is not None)
        if errors:
            raise errors[0]
        done += len(rows)
        try:
            await _report(progress, done, max(total, done))
        except BaseException:  # cancelled: no write may land after the index is dropped
            for pending in in_flight:
                pending.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            raise
    if in_flight:
        finished, _ = await asyncio.wait(in_flight)
        errors.extend(e for t in finished if (e := t.exception()) is not None)
    if errors:
        raise errors[0]
    return done


async def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is None:
        return
    result = progress(done, total)
    if inspect.isawaitable(result):
        await result
