"""Document handlers: enrich a stored document through the normal write path, rebuild the
search index. The services they use come from their registration (`DocumentServices`, built
by the composition root), not from the task context."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from capstan.db.unit import unit_of_work
from capstan.documents.schemas import DocumentUpdate
from capstan.errors import InvalidInput, NotFound
from capstan.tasks.context import TaskContext
from capstan.tasks.handlers.text import detect_language, keywords, rank_sentences, sentences_of
from capstan.tasks.registry import TaskRegistry, TaskType

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from capstan.documents.service import DocumentStore
    from capstan.search.reindex import Progress, ReindexReport

# reindex(progress, keep_old): capstan.search.reindex.reindex bound to this process's stores.
Reindex = Callable[["Progress | None", bool], Awaitable["ReindexReport"]]


@dataclass(frozen=True)
class DocumentServices:
    documents: DocumentStore
    reindex: Reindex
    db: async_sessionmaker[AsyncSession]  # the handler owns its unit of work


class EnrichInput(BaseModel):
    document_id: str = Field(..., min_length=36, max_length=36)
    sentences: int = Field(2, ge=1, le=20)
    keywords: int = Field(8, ge=1, le=50)


async def _enrich(
    services: DocumentServices, data: EnrichInput, ctx: TaskContext
) -> dict[str, Any]:
    store = services.documents
    await ctx.progress(0.05, "reading the document")
    try:
        view = await store.read(ctx.tenant_id, data.document_id, bypass_cache=True)
    except NotFound as exc:  # deleted since it was submitted: nothing to do, nothing to retry
        return {"document_id": data.document_id, "skipped": exc.detail}
    doc = json.loads(view.payload)
    text = "\n".join(p for p in (doc["title"], doc["body"]) if p)
    await ctx.progress(0.1, "detecting the language")
    language = await asyncio.to_thread(detect_language, text)
    lang = language["language"] or "en"
    parts = await sentences_of(doc["body"] or text, lang, ctx, 0.2, 0.7)
    await ctx.progress(0.7, "summarizing")
    summary = rank_sentences(parts, data.sentences)
    await ctx.progress(0.75, "extracting keywords")
    found = await asyncio.to_thread(keywords, text, data.keywords, lang if lang in _YAKE else "en")
    enrichment = {
        "summary": summary["summary"],
        "keywords": [k["keyword"] for k in found],
        "language": language["language"],
        "language_probability": language["probability"],
        "task_id": ctx.task_id,
    }
    await ctx.progress(0.95, "saving")  # the last cancellation point before the write
    # The normal write path: a new version, an outbox event, cache invalidation, reindexing.
    # Writing the same enrichment again (a retried attempt) changes nothing.
    metadata = {**doc["metadata"], "enrichment": enrichment}
    async with unit_of_work(services.db) as uow:  # the handler owns its unit of work
        patch = DocumentUpdate(metadata=metadata)
        updated = await store.update(uow, ctx.tenant_id, data.document_id, patch)
    return {"document_id": data.document_id, "version": updated.version, "enrichment": enrichment}


async def _enrich_check(store: DocumentStore, data: BaseModel, tenant_id: str) -> None:
    """At submit time: a document that does not exist fails the request, not three attempts."""
    assert isinstance(data, EnrichInput)
    try:
        await store.read(tenant_id, data.document_id, bypass_cache=True)
    except NotFound as exc:
        raise InvalidInput(f"input.document_id: {exc.detail}", field="input.document_id") from exc


# Languages YAKE ships stopwords for (a subset; others fall back to English).
_YAKE = {
    "ar",
    "bg",
    "br",
    "cz",
    "da",
    "de",
    "el",
    "en",
    "es",
    "et",
    "fa",
    "fi",
    "fr",
    "hi",
    "hr",
    "hu",
    "hy",
    "id",
    "it",
    "ja",
    "lt",
    "lv",
    "nl",
    "no",
    "pl",
    "pt",
    "ro",
    "ru",
    "sk",
    "sl",
    "sv",
    "tr",
    "uk",
    "zh",
}


class ReindexInput(BaseModel):
    keep_old: bool = Field(False, description="keep the previous index (for a quick rollback)")


async def _reindex(run: Reindex, data: ReindexInput, ctx: TaskContext) -> dict[str, Any]:
    from capstan.search.reindex import ReindexUnsupported

    async def progress(done: int, total: int) -> None:
        # A cancellation point after each page: reindex() then drops the half-built index.
        await ctx.progress(done / total if total else 1.0, f"{done}/{total} documents")

    await ctx.progress(0.0, "creating the new index")
    try:
        report = await run(progress, data.keep_old)
    except ReindexUnsupported as exc:
        return {"skipped": str(exc)}
    return report.as_dict()


def register(registry: TaskRegistry, services: DocumentServices) -> None:
    """The document task types, bound to `services`."""

    async def reindex_handler(data: ReindexInput, ctx: TaskContext) -> dict[str, Any]:
        return await _reindex(services.reindex, data, ctx)

    async def enrich(data: EnrichInput, ctx: TaskContext) -> dict[str, Any]:
        return await _enrich(services, data, ctx)

    async def enrich_check(data: BaseModel, tenant_id: str) -> None:
        await _enrich_check(services.documents, data, tenant_id)

    registry.register(
        TaskType(
            "documents.reindex",
            ReindexInput,
            reindex_handler,
            "Rebuild the search index from the database behind its alias, with zero downtime.",
            time_limit_seconds=6 * 3600,
            max_attempts=1,
            admin_only=True,  # rebuilds the index every tenant shares
        )
    )
    registry.register(
        TaskType(
            "documents.enrich",
            EnrichInput,
            enrich,
            "Summary, keywords and language of a stored document, written into its metadata.",
            check=enrich_check,
        )
    )
