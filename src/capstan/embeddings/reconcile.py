"""The embeddings drift check: every live document has vectors of the live space at its
current version, in every vector store, and no store holds a document the database no longer
has.

- missing or older in a store → an `embeddings.document` task is submitted for the current
  version (`force`), once per version (idempotency key `embeddings.document:<id>:<v>:repair`);
- in a store only → confirmed absent in the database after the store was read (ids are never
  reused), then removed from every store.

Documents changed within the grace period are the pipeline's normal lag, not drift: they are
neither counted nor repaired. `capstan embeddings reconcile` runs it on demand; the subscriber
process runs it every `CAPSTAN_EMBEDDINGS_RECONCILE_SECONDS` beside the embedder subscriber,
as the search reconciler runs beside the indexer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.db.schema import Document
from capstan.embeddings.pipeline import EmbeddingPipeline
from capstan.embeddings.spaces import live_document_pages
from capstan.observability.metrics import Metrics
from capstan.search.port import Removal
from capstan.search.vectors import Space
from capstan.tasks.handlers.embeddings import TYPE
from capstan.tasks.schemas import TaskSubmit
from capstan.tasks.service import TaskService

log = logging.getLogger(__name__)

FIRST_RUN_SECONDS = 10.0


@dataclass
class EmbeddingsReport:
    space: str = ""
    tenants: int = 0
    documents: int = 0
    current: int = 0  # documents whose vectors are at their version in every store
    missing: int = 0
    stale: int = 0
    extra: int = 0
    drift: int = 0
    submitted: int = 0
    removed: int = 0
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


async def reconcile_embeddings(
    pipeline: EmbeddingPipeline,
    db: async_sessionmaker[AsyncSession],
    tasks: TaskService | None,
    *,
    space: Space | None = None,
    grace_seconds: float = 30.0,
    tenants: Sequence[str] | None = None,
    repair: bool = True,
    inline: bool = False,
) -> EmbeddingsReport:
    """Compare (and with `repair`, repair) some tenants or all in `space` (default: the one
    writes go to). Missing or stale documents are resubmitted as tasks (`tasks`), or, with
    `inline`, embedded here (the re-embedding's last pass)."""
    target = space or await pipeline.write_space()
    report = EmbeddingsReport(space=f"{target.model}@{target.version} ({target.dimension}d)")
    stored: list[dict[tuple[str, str], int]] = []
    for store in await pipeline.stores():
        await store.ensure_space(target)
        await store.refresh()
        stored.append(
            await store.versions(target, tenants[0] if tenants and len(tenants) == 1 else None)
        )
    async with db() as session:
        stmt = select(Document.tenant_id, Document.id, Document.version, Document.updated_at)
        if tenants is not None:
            stmt = stmt.where(Document.tenant_id.in_(list(tenants)))
        rows = (await session.execute(stmt)).all()
    database = {(r.tenant_id, r.id): (r.version, r.updated_at) for r in rows}
    scope = set(tenants) if tenants is not None else None
    report.tenants = len({t for t, _ in database} | {t for s in stored for t, _ in s})
    report.documents = len(database)
    young = datetime.now(UTC) - timedelta(seconds=grace_seconds)
    to_embed: list[tuple[str, str, int]] = []
    for (tenant, doc_id), (version, updated_at) in database.items():
        have = [s.get((tenant, doc_id)) for s in stored]
        if all(h is not None and h >= version for h in have):
            report.current += 1
            continue
        if updated_at >= young:
            continue  # the pipeline's normal lag
        if any(h is None for h in have):
            report.missing += 1
        else:
            report.stale += 1
        report.drift += 1
        if len(report.examples) < 10:
            report.examples.append(doc_id)
        to_embed.append((tenant, doc_id, version))
    candidates = sorted(
        {
            key
            for s in stored
            for key in s
            if key not in database and (scope is None or key[0] in scope)
        }
    )
    extra: list[Removal] = []
    if candidates:
        still: set[str] = set()
        async with db() as session:
            for start in range(0, len(candidates), 1000):
                ids = [i for _, i in candidates[start : start + 1000]]
                still.update(
                    (await session.scalars(select(Document.id).where(Document.id.in_(ids)))).all()
                )
        for tenant, doc_id in candidates:
            if doc_id in still:
                continue
            version = max(s.get((tenant, doc_id), 0) for s in stored)
            extra.append(Removal(tenant, doc_id, version))
        report.extra = len(extra)
        report.drift += len(extra)
        report.examples.extend(r.id for r in extra[: max(0, 10 - len(report.examples))])
    if not repair:
        return report
    if inline:
        for tenant, doc_id, version in to_embed:
            outcome = await pipeline.embed_document(
                tenant, doc_id, version, _quiet, space=target, force=True
            )
            report.submitted += int(outcome.action == "embedded")
    elif tasks is not None:
        for tenant, doc_id, version in to_embed:
            _task, fresh = await tasks.submit(
                tenant,
                TaskSubmit(
                    type=TYPE,
                    input={"document_id": doc_id, "version": version, "force": True},
                    idempotency_key=f"{TYPE}:{doc_id}:{version}:repair",
                ),
            )
            report.submitted += int(fresh)
    for start in range(0, len(extra), 500):
        await pipeline.remove(target, extra[start : start + 500])
        report.removed += len(extra[start : start + 500])
    return report


async def _quiet(fraction: float, message: str | None) -> None:
    return None


async def rebuild(
    pipeline: EmbeddingPipeline,
    db: async_sessionmaker[AsyncSession],
    target: Space,
    progress: Callable[[int, int], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Re-embed every live document into `target` (a page at a time, progress after each),
    repair what changed meanwhile, then make `target` live and drop the retired space."""
    spaces = pipeline.spaces
    assert spaces is not None
    total, pages = await live_document_pages(db)
    done = 0
    await spaces.progress(target, done, total)
    async for docs in pages():
        await pipeline.write(target, await pipeline.vectors_of_many(docs))
        done += len(docs)
        await spaces.progress(target, done, max(total, done))
        if progress is not None:
            await progress(done, max(total, done))
    final = await reconcile_embeddings(
        pipeline, db, None, space=target, grace_seconds=0, inline=True
    )
    retired = await spaces.switch(target)
    if retired is not None:
        for store in await pipeline.stores():
            await store.drop_space(retired)
    return {
        "space": target.key,
        "documents": done,
        "repaired": final.submitted + final.removed,
        "retired": None if retired is None else retired.key,
    }


class EmbeddingsReconciler:
    """The periodic drift check: runs beside the embedder subscriber, every `interval` s."""

    def __init__(
        self,
        pipeline: EmbeddingPipeline,
        db: async_sessionmaker[AsyncSession],
        tasks: TaskService,
        *,
        interval: float,
        grace_seconds: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._pipeline = pipeline
        self._db = db
        self._tasks = tasks
        self._interval = interval
        self._grace = grace_seconds
        self.runs = 0

    async def run(self, stopping: asyncio.Event) -> None:
        # The first check comes soon after start, so a model change starts its build at once.
        wait = min(self._interval, FIRST_RUN_SECONDS)
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), wait)
                return
            except TimeoutError:
                pass
            wait = self._interval
            try:
                if await self._build():
                    continue
                report = await reconcile_embeddings(
                    self._pipeline, self._db, self._tasks, grace_seconds=self._grace
                )
                self.runs += 1
                if self._metrics is not None:
                    self._metrics.embeddings_drift.set(report.drift)
                if report.drift:
                    log.warning("embeddings drift repaired", extra=report.as_dict())
            except Exception as exc:  # a store or the embedder down: the next run tries again
                log.warning("embeddings reconciliation failed", extra={"error": repr(exc)})

    async def _progress(self, done: int, total: int) -> None:
        if self._metrics is not None:
            self._metrics.embeddings_rebuild_done.labels("done").set(done)
            self._metrics.embeddings_rebuild_done.labels("total").set(total)

    async def _build(self) -> bool:
        """Run the re-embedding when the configured model is not live and no other process
        holds the build; True when a build was (or is being) done."""
        spaces = self._pipeline.spaces
        if spaces is None:
            return False
        _live, building = await spaces.sync(await self._pipeline.write_space())
        if building is None:
            return False
        if await spaces.claim(building):
            log.warning("re-embedding every document", extra={"space": building.key})
            result = await rebuild(self._pipeline, self._db, building, self._progress)
            log.warning("re-embedding done, space switched", extra=result)
        return True
