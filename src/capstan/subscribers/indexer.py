"""The indexer subscriber: document events → bulk writes to the search index.

Each event only says *which* document changed; the indexer reads the row as it is now and
writes it with the row version as an external version (or deletes it at `last version + 1`
when the row is gone). Events handled concurrently (prefetch) are gathered into one bulk
request per batch (`search_batch_size`, or after `search_batch_linger_ms`). Out-of-order,
replayed or duplicated events cannot put an old version back: Elasticsearch refuses any write
at or below the version it holds, tombstones included. When Elasticsearch is down the handler
raises and the runtime retries (`search_indexer_max_attempts`, default 50, so an outage of
hours is ridden out); whatever is still missing afterwards the reconciler repairs.

Engines the database maintains itself (PostgreSQL FTS, SQLite FTS5) need nothing: the handler
only counts the event.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.events.envelope import Event
from capstan.observability.metrics import Metrics
from capstan.search import indexing
from capstan.search.port import IndexReport, Removal, SearchEngine, SearchUnavailable
from capstan.subscribers.runtime import Outcome

log = logging.getLogger(__name__)


class IndexingFailed(Exception):
    """Elasticsearch refused this document (the runtime retries the event)."""


@dataclass(frozen=True, slots=True)
class Pending:
    tenant_id: str
    doc_id: str
    version: int
    time: datetime
    done: asyncio.Future[None]


class IndexerSubscriber:
    name: ClassVar[str] = "indexer"
    patterns: ClassVar[tuple[str, ...]] = ("document.*",)
    ordered: ClassVar[bool] = False

    def __init__(
        self,
        metrics: Metrics,
        engine: SearchEngine | None = None,
        db: async_sessionmaker[AsyncSession] | None = None,
        *,
        batch_size: int = 500,
        linger_ms: float = 5.0,
        max_attempts: int | None = None,
    ) -> None:
        self._metrics = metrics
        self._engine = engine
        self._db = db
        self._batch_size = batch_size
        self._linger = linger_ms / 1000
        # Read by the runtime builder: the indexer outlasts outages by retrying longer.
        self.max_attempts = max_attempts
        self._pending: list[Pending] = []
        self._timer: asyncio.Task[None] | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def handle(self, event: Event, session: AsyncSession) -> Outcome | None:
        return await self.apply_idempotent(event)

    async def apply_idempotent(self, event: Event) -> Outcome | None:
        """The runtime calls this one (subscribers/runtime.py): external versions make a
        replayed event harmless, and no pooled connection waits for the bulk request."""
        action = event.routing_key.split(".", 1)[1]
        self._metrics.indexer_pending.labels(action).inc()
        if self._engine is None or self._db is None or not self._engine.derived:
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(
            Pending(
                event.tenant_id,
                str(event.data["id"]),
                int(event.data.get("version", 0)),
                event.time,
                done,
            )
        )
        if len(self._pending) >= self._batch_size:
            self._flush_now()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._linger_then_flush())
        await done
        return None

    async def _linger_then_flush(self) -> None:
        await asyncio.sleep(self._linger)
        self._timer = None
        self._flush_now()

    def _flush_now(self) -> None:
        batch, self._pending = self._pending, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if batch:
            task = asyncio.create_task(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[Pending]) -> None:
        try:
            failed = await self._write(batch)
        except Exception as exc:
            for p in batch:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        for p in batch:
            if p.done.done():
                continue
            if p.doc_id in failed:
                p.done.set_exception(IndexingFailed(f"{p.doc_id}: {failed[p.doc_id]}"))
            else:
                p.done.set_result(None)

    async def _write(self, batch: list[Pending]) -> dict[str, str]:
        assert self._engine is not None and self._db is not None
        self._metrics.search_index_batch_size.observe(len(batch))
        async with self._db() as session:
            rows = await indexing.load(session, [p.doc_id for p in batch])
        removals: dict[str, Removal] = {}
        for p in batch:
            if p.doc_id not in rows:
                # Gone: the tombstone must outrank every version this event could know of.
                prior = removals.get(p.doc_id)
                if prior is None or prior.version < p.version:
                    removals[p.doc_id] = Removal(p.tenant_id, p.doc_id, p.version)
        tenant_of = {p.doc_id: p.tenant_id for p in batch}
        docs = [d for d in rows.values() if tenant_of[d.id] == d.tenant_id]
        try:
            indexed = await self._engine.index(docs)
            deleted = await self._engine.delete(list(removals.values()))
        except SearchUnavailable:
            self._metrics.search_index_operations.labels("index", "failed").inc(len(docs))
            self._metrics.search_index_operations.labels("delete", "failed").inc(len(removals))
            raise
        self._count("index", indexed)
        self._count("delete", deleted)
        oldest = min(p.time for p in batch)
        self._metrics.search_index_lag.set(max((datetime.now(UTC) - oldest).total_seconds(), 0))
        failed = {**indexed.failed, **deleted.failed}
        if failed:
            log.warning("documents not indexed", extra={"failed": dict(list(failed.items())[:5])})
        return failed

    def _count(self, operation: str, report: IndexReport) -> None:
        m = self._metrics.search_index_operations
        m.labels(operation, "applied").inc(report.applied)
        m.labels(operation, "stale").inc(report.stale)
        m.labels(operation, "failed").inc(len(report.failed))
