"""The reconciler: compares the database and the index per tenant (ids and versions) and
repairs every difference, reading the rows as they are now.

- missing or older in the index → the current row is written (external version);
- in the index but not in the database → confirmed absent after the index was read (ids are
  never reused), then deleted at `indexed version + 1`;
- documents of tenants that no longer exist (deleted tenants cascade without events) are
  found through the index's own tenant list.

`capstan_search_drift_documents` is the number of differences found, not counting documents
changed within `search_reconcile_grace_seconds` (the indexer's normal lag is not drift).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.db.schema import Document
from capstan.observability.metrics import Metrics
from capstan.search import indexing
from capstan.search.elasticsearch import ElasticsearchEngine
from capstan.search.port import Removal

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    tenants: int = 0
    documents: int = 0
    missing: int = 0
    stale: int = 0
    extra: int = 0
    ahead: int = 0
    drift: int = 0
    repaired: int = 0
    reindexed: int = 0
    deleted: int = 0
    failed: int = 0
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


async def reconcile(
    engine: ElasticsearchEngine,
    db: async_sessionmaker[AsyncSession],
    metrics: Metrics | None = None,
    *,
    grace_seconds: float = 30.0,
    tenants: Sequence[str] | None = None,
    index: str | None = None,
    repair: bool = True,
) -> ReconcileReport:
    """Compare (and repair) some tenants or all; `index` checks one concrete index (reindex).
    The drift gauge is set from every run against the live alias."""
    report = ReconcileReport()
    if tenants is not None:
        scope = set(tenants)
    else:
        async with db() as session:
            scope = set((await session.scalars(select(Document.tenant_id).distinct())).all())
        scope |= await engine.tenants(index=index)
    targets = [index] if index is not None else None
    young = datetime.now(UTC) - timedelta(seconds=grace_seconds)
    for tenant in sorted(scope):
        report.tenants += 1
        await _tenant(engine, db, tenant, targets, index, young, report, repair)
    if metrics is not None:
        metrics.search_repaired.labels("index").inc(report.reindexed)
        metrics.search_repaired.labels("delete").inc(report.deleted)
        if index is None:
            metrics.search_drift.set(report.drift)
    return report


async def _tenant(
    engine: ElasticsearchEngine,
    db: async_sessionmaker[AsyncSession],
    tenant: str,
    targets: list[str] | None,
    index: str | None,
    young: datetime,
    report: ReconcileReport,
    repair: bool,
) -> None:
    async with db() as session:
        rows = (
            await session.execute(
                select(Document.id, Document.version, Document.updated_at).where(
                    Document.tenant_id == tenant
                )
            )
        ).all()
    database = {r.id: (r.version, r.updated_at) for r in rows}
    indexed = await engine.versions(tenant, index=index)
    report.documents += len(database)
    to_index: list[str] = []
    for doc_id, (version, updated_at) in database.items():
        have = indexed.get(doc_id)
        if have is not None and have >= version:
            if have > version:
                report.ahead += 1  # cannot happen with row versions; reported, not touched
            continue
        if have is None:
            report.missing += 1
        else:
            report.stale += 1
        if updated_at < young:
            report.drift += 1
            if len(report.examples) < 10:
                report.examples.append(doc_id)
        to_index.append(doc_id)
    candidates = [i for i in indexed if i not in database]
    extra: list[Removal] = []
    if candidates:
        still: set[str] = set()
        async with db() as session:
            for start in range(0, len(candidates), 1000):
                chunk = candidates[start : start + 1000]
                found = await session.scalars(select(Document.id).where(Document.id.in_(chunk)))
                still.update(found.all())
        extra = [Removal(tenant, i, indexed[i]) for i in candidates if i not in still]
        report.extra += len(extra)
        report.drift += len(extra)
        report.examples.extend(r.id for r in extra[: max(0, 10 - len(report.examples))])
    if not repair or not (to_index or extra):
        return
    for start in range(0, len(to_index), 500):
        async with db() as session:
            docs = await indexing.load(session, to_index[start : start + 500])
        result = await engine.index(list(docs.values()), targets=targets)
        report.repaired += result.applied
        report.reindexed += result.applied
        report.failed += len(result.failed)
    for start in range(0, len(extra), 500):
        result = await engine.delete(extra[start : start + 500], targets=targets)
        report.repaired += result.applied
        report.deleted += result.applied
        report.failed += len(result.failed)


class Reconciler:
    """The periodic job: runs beside the indexer, every `interval` seconds (built by the
    composition root, capstan.composition.build_reconciler)."""

    def __init__(
        self,
        engine: ElasticsearchEngine,
        db: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        *,
        interval: float,
        grace_seconds: float,
    ) -> None:
        self._engine = engine
        self._db = db
        self._metrics = metrics
        self._interval = interval
        self._grace = grace_seconds
        self.runs = 0

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), self._interval)
                return
            except TimeoutError:
                pass
            try:
                report = await reconcile(
                    self._engine, self._db, self._metrics, grace_seconds=self._grace
                )
                self.runs += 1
                if report.drift or report.repaired:
                    log.warning("search index repaired", extra=report.as_dict())
            except Exception as exc:  # Elasticsearch down: the next run tries again
                log.warning("reconciliation failed", extra={"error": repr(exc)})
