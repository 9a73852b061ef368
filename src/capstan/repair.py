"""Finding, and fixing, rows stored before the API refused what it cannot read back.

Such rows (a lone surrogate, a NUL, NaN, metadata nested hundreds of levels) make every read
of them fail. `capstan data check` reports them; with `--fix` each is rewritten with the
value made storable (see `make_storable`): a document as a normal update (new version,
`document.updated` event, cache entry invalidated), a task's input in place. It also reports
documents without a stored rendering (`documents.rendered`, written around the API: the
gateway cannot serve them); `--fix` renders them in place.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, cast, select, update

from capstan.db.schema import Document, Task
from capstan.documents.cache import document_key
from capstan.documents.service import serialize
from capstan.events.outbox import add_event
from capstan.storable import MAX_JSON_DEPTH, storable_problem

if TYPE_CHECKING:
    from capstan.container import Container

BATCH = 200
NOT_RENDERED = "rendered: no stored response body (written around the API)"
_UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Finding:
    table: str
    row_id: str
    tenant_id: str
    problem: str
    fixed: bool = False


def storable_text(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD (the replacement character)."""
    return _UNSTORABLE_CHARS.sub("\ufffd", text)


def make_storable(value: Any, depth: int = 0) -> Any:
    """A copy of `value` that passes `storable_problem`: bad characters replaced, NaN and
    infinities as null, and anything nested deeper than MAX_JSON_DEPTH levels as null."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list):
        if depth + 1 > MAX_JSON_DEPTH:
            return None
        if isinstance(value, dict):
            return {storable_text(str(k)): make_storable(v, depth + 1) for k, v in value.items()}
        return [make_storable(v, depth + 1) for v in value]
    return value


async def _parse(raw: str | None) -> Any:
    # A fresh thread starts with an empty stack: json.loads decodes the ~1,000 levels that
    # overflow it on the event loop (the API parsed them once, so none is deeper).
    return None if raw is None else await asyncio.to_thread(json.loads, raw)


async def check(c: Container, *, fix: bool, tenant_id: str | None = None) -> AsyncIterator[Finding]:
    """Every unstorable document and task (of one tenant, or all), fixed when `fix` is set."""
    async for finding in _documents(c, fix=fix, tenant_id=tenant_id):
        yield finding
    async for finding in _tasks(c, fix=fix, tenant_id=tenant_id):
        yield finding


async def _documents(c: Container, *, fix: bool, tenant_id: str | None) -> AsyncIterator[Finding]:
    after = ""
    while True:
        # JSON columns read as text: decoding them through the ORM is what fails.
        stmt = (
            select(
                Document.id,
                Document.tenant_id,
                Document.title,
                Document.body,
                cast(Document.tags, Text),
                cast(Document.metadata_, Text),
                Document.rendered.is_(None),
            )
            .where(Document.id > after)
            .order_by(Document.id)
            .limit(BATCH)
        )
        if tenant_id is not None:
            stmt = stmt.where(Document.tenant_id == tenant_id)
        async with c.db() as session:
            rows = list(await session.execute(stmt))
        if not rows:
            return
        after = rows[-1][0]
        for doc_id, owner, title, body, tags_raw, metadata_raw, unrendered in rows:
            fields = {
                "title": title,
                "body": body,
                "tags": await _parse(tags_raw),
                "metadata": await _parse(metadata_raw),
            }
            problem = next(
                (p for name, v in fields.items() if (p := storable_problem(v, where=name))), None
            )
            if problem is None and unrendered:
                # Written around the API: the gateway has no bytes to serve for it.
                if fix:
                    await _render_document(c, doc_id)
                yield Finding("documents", doc_id, owner, NOT_RENDERED, fixed=fix)
                continue
            if problem is None:
                continue
            if fix:
                await _fix_document(c, doc_id, owner, fields)
            yield Finding("documents", doc_id, owner, problem, fixed=fix)


async def _render_document(c: Container, doc_id: str) -> None:
    """Store the rendering of the row as it is (same version: the bytes are those the API
    served for it, so no cache entry needs invalidating)."""
    async with c.db.begin() as session:
        doc = await session.get(Document, doc_id, populate_existing=True)
        if doc is not None:
            doc.rendered = serialize(doc)


async def _fix_document(c: Container, doc_id: str, tenant_id: str, fields: dict[str, Any]) -> None:
    fixed = {name: make_storable(value) for name, value in fields.items()}
    async with c.db.begin() as session:
        row = (
            await session.execute(
                update(Document)
                .where(Document.id == doc_id, Document.tenant_id == tenant_id)
                .values(
                    title=fixed["title"],
                    body=fixed["body"],
                    tags=fixed["tags"],
                    metadata_=fixed["metadata"],
                    version=Document.version + 1,
                    updated_at=datetime.now(UTC),
                )
                .returning(Document.version, Document.collection)
            )
        ).one()
        # The new version's response body, as DocumentStore stores it with every write.
        doc = await session.get(Document, doc_id, populate_existing=True)
        if doc is not None:
            doc.rendered = serialize(doc)
        add_event(
            session,
            source=c.settings.source,
            entity="document",
            action="updated",
            tenant_id=tenant_id,
            subject=f"documents/{doc_id}",
            data={
                "id": doc_id,
                "collection": row.collection,
                "version": row.version,
                "title": fixed["title"],
                "tags": fixed["tags"],
            },
        )
    c.wake_relays()
    await c.cache.invalidate(
        document_key(tenant_id, doc_id), row.version, c.settings.cache_ttl_seconds
    )


async def _tasks(c: Container, *, fix: bool, tenant_id: str | None) -> AsyncIterator[Finding]:
    after = ""
    while True:
        stmt = (
            select(Task.id, Task.tenant_id, cast(Task.input, Text))
            .where(Task.id > after)
            .order_by(Task.id)
            .limit(BATCH)
        )
        if tenant_id is not None:
            stmt = stmt.where(Task.tenant_id == tenant_id)
        async with c.db() as session:
            rows = list(await session.execute(stmt))
        if not rows:
            return
        after = rows[-1][0]
        for task_id, owner, input_raw in rows:
            value = await _parse(input_raw)
            problem = storable_problem(value, where="input")
            if problem is None:
                continue
            if fix:
                async with c.db.begin() as session:
                    await session.execute(
                        update(Task).where(Task.id == task_id).values(input=make_storable(value))
                    )
            yield Finding("tasks", task_id, owner, problem, fixed=fix)
