"""The document operations every caller (API, task handlers) goes through.

Writes work in the caller's unit of work (capstan.db.unit): the row and its outbox event are
flushed into the caller's transaction; the cache is invalidated after that transaction
commits, before the caller acknowledges (or, when the cache cannot be reached, the durable
cache generation is bumped: capstan.documents.cache). `create_one` is the exception the hot
path needs: on PostgreSQL a create that is the whole unit of work is ONE autocommitted
statement holding the row and its event (capstan.db.fastpath).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.db.dialect import Dialect
from capstan.db.fastpath import FastPath
from capstan.db.replica import ReadRouter
from capstan.db.schema import Document
from capstan.db.unit import UnitOfWork, unit_of_work
from capstan.documents import repository, statements
from capstan.documents.cache import CacheAside, Loaded, document_key
from capstan.documents.schemas import DocumentCreate, DocumentRead, DocumentUpdate
from capstan.errors import InvalidInput, NotFound, PreconditionFailed
from capstan.events.outbox import add_envelope, envelope
from capstan.ids import uuid7
from capstan.search.analysis import search_columns


@dataclass(frozen=True, slots=True)
class DocumentView:
    """A document as the API returns it: serialized JSON, its version, and where it came from."""

    id: str
    version: int
    payload: bytes
    cache: str


def to_read(doc: Document) -> DocumentRead:
    return DocumentRead(
        id=doc.id,
        collection=doc.collection,
        title=doc.title,
        body=doc.body,
        tags=list(doc.tags),
        metadata=dict(doc.metadata_),
        version=doc.version,
        created_at=doc.created_at,
        updated_at=doc.updated_at,
    )


def serialize(doc: Document) -> bytes:
    """The response body, byte for byte what the cache holds (docs/contracts/cache.md)."""
    return to_read(doc).model_dump_json().encode()


def rendered(doc: Document) -> bytes:
    """The body stored with the row (`documents.rendered`), or rendered now for a row written
    around Capstan (NULL there). Every service returns these bytes for this version."""
    # Deferred: a row loaded without it is rendered rather than lazily loaded (no I/O here).
    stored = None if "rendered" in inspect(doc).unloaded else doc.rendered
    return stored if stored is not None else serialize(doc)


def encode_cursor(doc_id: str) -> str:
    return base64.urlsafe_b64encode(doc_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("the cursor is not one this API returned", field="cursor") from exc
    if len(raw) != 36:
        raise InvalidInput("the cursor is not one this API returned", field="cursor")
    return raw


def _event_data(doc: Document) -> dict[str, Any]:
    return {
        "id": doc.id,
        "collection": doc.collection,
        "version": doc.version,
        "title": doc.title,
        "tags": list(doc.tags),
    }


class DocumentStore:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        dialect: Dialect,
        cache: CacheAside,
        source: str,
        on_commit: Callable[[], None] = lambda: None,
        reads: ReadRouter | None = None,
        fast: FastPath | None = None,
    ):
        self._db = db
        self._dialect = dialect
        # PostgreSQL: a create is one statement on raw asyncpg (the ORM flush was a quarter
        # of the API's CPU per write).
        self._fast = fast
        # Listing may read from a replica; single reads stay on `db` behind the cache.
        self._reads = reads
        self._cache = cache
        self._source = source
        self._on_commit = on_commit  # wakes an in-process relay (embedded mode)

    async def read(
        self, tenant_id: str, doc_id: str, *, bypass_cache: bool = False
    ) -> DocumentView:
        """One document through the cache; NotFound for a missing or foreign id."""

        async def load() -> Loaded | None:
            async with self._db() as session:
                found = await repository.get_rendered(session, tenant_id, doc_id)
                if found is None:
                    return None
                version, body = found
                if body is not None:
                    return Loaded(version, body)
                # Written around the API (no stored rendering): render it, as before 0010.
                doc = await repository.get(session, tenant_id, doc_id)
            return None if doc is None else Loaded(doc.version, serialize(doc))

        result = await self._cache.read(document_key(tenant_id, doc_id), load, bypass=bypass_cache)
        if result.loaded is None:
            raise NotFound(f"document {doc_id} does not exist")
        return DocumentView(doc_id, result.loaded.version, result.loaded.payload, result.cache)

    async def create_one(self, tenant_id: str, body: DocumentCreate) -> Document:
        """Create a document as a unit of work of its own (the API's POST)."""
        if self._fast is None:
            async with unit_of_work(self._db) as uow:
                return await self.create(uow, tenant_id, body)
        doc = self._new(tenant_id, body)
        for name, value in search_columns(doc.title, doc.body, doc.tags).items():
            setattr(doc, name, value)
        event = self._envelope(doc, "created")
        await self._fast.execute(statements.CREATE, *statements.create_args(doc, event))
        self._on_commit()
        return doc

    async def create(self, uow: UnitOfWork, tenant_id: str, body: DocumentCreate) -> Document:
        """A new document (version 1) and its event in the caller's transaction."""
        doc = self._new(tenant_id, body)
        uow.session.add(doc)
        self._event(uow.session, doc, "created")
        await uow.session.flush()
        uow.after_commit(self._on_commit)
        # No invalidation needed: nobody can have cached an id that did not exist.
        return doc

    def _new(self, tenant_id: str, body: DocumentCreate) -> Document:
        now = datetime.now(UTC)
        doc = Document(
            id=uuid7(),
            tenant_id=tenant_id,
            collection=body.collection,
            title=body.title,
            body=body.body,
            tags=_unique(body.tags),
            metadata_=body.metadata,
            version=1,
            created_at=now,
            updated_at=now,
        )
        # Rendered once, here: the response, the cache fills and the gateway all use these bytes.
        doc.rendered = serialize(doc)
        return doc

    async def update(
        self,
        uow: UnitOfWork,
        tenant_id: str,
        doc_id: str,
        patch: DocumentUpdate,
        *,
        if_match: int | None = None,
    ) -> Document:
        """Change some fields in the caller's transaction; with `if_match`, only if the
        document is still at that version (PreconditionFailed otherwise)."""
        session = uow.session
        doc = await self._locked(session, tenant_id, doc_id, if_match)
        changes = patch.model_dump(exclude_unset=True)
        changed = False
        for field, value in changes.items():
            if value is None:
                raise InvalidInput(f"{field} cannot be null", field=field)
            if field == "tags":
                value = _unique(value)
            attribute = "metadata_" if field == "metadata" else field
            if getattr(doc, attribute) != value:
                setattr(doc, attribute, value)
                changed = True
        if not changed:  # `PATCH {}` or the same values: no new version, no event
            await session.refresh(doc, ["rendered"])  # the answer is this version's bytes
            return doc
        doc.version += 1
        doc.updated_at = datetime.now(UTC)
        doc.rendered = serialize(doc)
        self._event(session, doc, "updated")
        await session.flush()
        version = doc.version
        uow.after_commit(self._on_commit)
        uow.after_commit(lambda: self._cache.invalidate(document_key(tenant_id, doc_id), version))
        return doc

    async def delete(
        self, uow: UnitOfWork, tenant_id: str, doc_id: str, *, if_match: int | None = None
    ) -> None:
        """Delete the document in the caller's transaction."""
        session = uow.session
        doc = await self._locked(session, tenant_id, doc_id, if_match)
        await session.delete(doc)
        self._event(session, doc, "deleted")
        await session.flush()
        # version + 1 outranks every version the document ever had.
        outranking = doc.version + 1
        uow.after_commit(self._on_commit)
        uow.after_commit(
            lambda: self._cache.invalidate(document_key(tenant_id, doc_id), outranking)
        )

    async def list(
        self,
        tenant_id: str,
        *,
        collection: str | None,
        tag: str | None,
        cursor: str | None,
        limit: int,
    ) -> tuple[list[Document], str | None]:
        after = decode_cursor(cursor) if cursor else None

        async def page(session: AsyncSession) -> list[Document]:
            return await repository.page(
                session,
                self._dialect,
                tenant_id,
                collection=collection,
                tag=tag,
                after_id=after,
                limit=limit + 1,
            )

        if self._reads is not None:
            rows = await self._reads.run_session(page)
        else:
            async with self._db() as session:
                rows = await page(session)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].id) if more and rows else None

    async def _locked(
        self, session: AsyncSession, tenant_id: str, doc_id: str, if_match: int | None
    ) -> Document:
        doc = await repository.get_for_update(session, tenant_id, doc_id)
        if doc is None:
            raise NotFound(f"document {doc_id} does not exist")
        if if_match is not None and doc.version != if_match:
            raise PreconditionFailed(
                f"document {doc_id} is at version {doc.version}, not {if_match}",
                current_version=doc.version,
            )
        return doc

    def _envelope(self, doc: Document, action: str) -> dict[str, Any]:
        return envelope(
            source=self._source,
            entity="document",
            action=action,
            tenant_id=doc.tenant_id,
            subject=f"documents/{doc.id}",
            data=_event_data(doc),
        )

    def _event(self, session: AsyncSession, doc: Document, action: str) -> None:
        add_envelope(session, self._envelope(doc, action))


def _unique(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))
