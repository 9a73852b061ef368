"""From database rows to index documents: the indexer, the reconciler and reindex all read
the current row (never an event's payload), so whatever they write is the truth at read time,
and external versioning settles every race between them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.schema import Document
from capstan.search.port import IndexDoc


def to_index_doc(doc: Document) -> IndexDoc:
    return IndexDoc(
        id=doc.id,
        tenant_id=doc.tenant_id,
        collection=doc.collection,
        title=doc.title,
        body=doc.body,
        tags=tuple(doc.tags),
        metadata=dict(doc.metadata_),
        version=doc.version,
        created_at=doc.created_at,
        updated_at=doc.updated_at,
    )


async def load(session: AsyncSession, ids: Sequence[str]) -> dict[str, IndexDoc]:
    """The current rows of `ids` that still exist."""
    out: dict[str, IndexDoc] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), 1000):
        chunk = unique[start : start + 1000]
        rows = await session.scalars(select(Document).where(Document.id.in_(chunk)))
        for doc in rows:
            out[doc.id] = to_index_doc(doc)
    return out
