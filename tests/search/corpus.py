"""A small corpus with known answers, and a harness that writes it wherever an engine reads."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.db.schema import Document
from capstan.ids import uuid7
from capstan.search.analysis import search_columns
from capstan.search.port import IndexDoc, Removal, SearchEngine, SearchQuery, SearchResult
from capstan.tenants.service import create_tenant

T0 = datetime(2024, 1, 1, tzinfo=UTC)

# key → (title, body, collection, tags, metadata, month of creation)
CORPUS: dict[str, tuple[str, str, str, list[str], dict[str, Any], int]] = {
    "apollo": (
        "Apollo moon landing",
        "The Apollo program landed astronauts on the moon in 1969.",
        "space",
        ["history", "nasa"],
        {"lang": "en", "year": 1969},
        1,
    ),
    "mars": (
        "Mars rover",
        "Curiosity rover explores the red planet Mars.",
        "space",
        ["nasa", "robots"],
        {"lang": "en", "year": 2012},
        2,
    ),
    "cheese": (
        "Moon cheese",
        "An old story says the moon is made of cheese.",
        "folklore",
        ["humor"],
        {"lang": "fr", "year": 1800, "verified": False},
        3,
    ),
    "garden": (
        "Gardening basics",
        "Plant tomatoes in spring and water them often.",
        "garden",
        ["howto"],
        {"lang": "en"},
        4,
    ),
    "soil": (
        "Lunar soil",
        "Regolith covers the moon; gardening on the moon is hard.",
        "space",
        ["nasa", "howto"],
        {},
        5,
    ),
    "code": (
        "Parsing helpers",
        "Call json_tools.parseDocument to read a file; the serializer formatted the output "
        "as JSON for the Café menu.",
        "code",
        ["python-api"],
        {},
        7,
    ),
}
FOREIGN = ("Moon secrets of the other tenant", "moon moon moon", "secret", ["nasa"], {}, 6)


def make_doc(tenant_id: str, spec: tuple[Any, ...], version: int = 1) -> IndexDoc:
    title, body, collection, tags, metadata, month = spec
    created = T0.replace(month=month)
    return IndexDoc(
        id=uuid7(),
        tenant_id=tenant_id,
        collection=collection,
        title=title,
        body=body,
        tags=tuple(tags),
        metadata=metadata,
        version=version,
        created_at=created,
        updated_at=created,
    )


@dataclass
class Harness:
    """An engine plus the way to make a document exist for it (database rows and/or index)."""

    engine: SearchEngine
    db: async_sessionmaker[AsyncSession] | None
    tenant: str = ""
    other: str = ""
    docs: dict[str, IndexDoc] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)  # ids never come back in the database

    async def setup(self) -> None:
        if self.db is not None:
            async with self.db.begin() as session:
                self.tenant = (await create_tenant(session, f"a-{uuid.uuid4().hex[:8]}")).tenant_id
                self.other = (await create_tenant(session, f"b-{uuid.uuid4().hex[:8]}")).tenant_id
        else:
            self.tenant, self.other = str(uuid.uuid4()), str(uuid.uuid4())
        for key, spec in CORPUS.items():
            self.docs[key] = make_doc(self.tenant, spec)
        self.docs["foreign"] = make_doc(self.other, FOREIGN)
        await self.put(*self.docs.values())

    async def put(self, *docs: IndexDoc) -> Any:
        if self.db is not None:
            async with self.db.begin() as session:
                for d in docs:
                    if d.id in self.removed:
                        continue
                    values = {
                        "tenant_id": d.tenant_id,
                        "collection": d.collection,
                        "title": d.title,
                        "body": d.body,
                        "tags": list(d.tags),
                        "metadata_": d.metadata,
                        "version": d.version,
                        "created_at": d.created_at,
                        "updated_at": d.updated_at,
                        # A Core update sets the analyzed terms itself (no ORM event runs).
                        **search_columns(d.title, d.body, d.tags),
                    }
                    changed = await session.execute(
                        update(Document)
                        .where(Document.id == d.id, Document.version < d.version)
                        .values(**values)
                    )
                    if not changed.rowcount and await session.get(Document, d.id) is None:  # type: ignore[attr-defined]
                        session.add(Document(id=d.id, **values))
        report = await self.engine.index(list(docs))
        await self.engine.refresh()
        return report

    async def remove(self, doc: IndexDoc) -> Any:
        self.removed.add(doc.id)
        if self.db is not None:
            async with self.db.begin() as session:
                await session.execute(delete(Document).where(Document.id == doc.id))
        report = await self.engine.delete([Removal(doc.tenant_id, doc.id, doc.version)])
        await self.engine.refresh()
        return report

    def name_of(self, doc_id: str) -> str:
        return next(k for k, d in self.docs.items() if d.id == doc_id)

    async def ask(self, text: str | None = None, **kwargs: Any) -> SearchResult:
        return await self.engine.query(SearchQuery(tenant_id=self.tenant, text=text, **kwargs))

    async def keys(self, text: str | None = None, **kwargs: Any) -> list[str]:
        return [self.name_of(h.id) for h in (await self.ask(text, **kwargs)).hits]

    def bumped(self, key: str, **changes: Any) -> IndexDoc:
        doc = self.docs[key]
        return replace(doc, version=doc.version + 1, **changes)
