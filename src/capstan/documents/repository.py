"""SQL for documents. Functions take the caller's session and only flush."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.dialect import Dialect
from capstan.db.schema import Document


async def get(session: AsyncSession, tenant_id: str, doc_id: str) -> Document | None:
    return await session.scalar(
        select(Document).where(Document.tenant_id == tenant_id, Document.id == doc_id)
    )


async def get_rendered(
    session: AsyncSession, tenant_id: str, doc_id: str
) -> tuple[int, bytes | None] | None:
    """(version, stored response body) of the row, without decoding the row itself."""
    row = (
        await session.execute(
            select(Document.version, Document.rendered).where(
                Document.tenant_id == tenant_id, Document.id == doc_id
            )
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def get_for_update(session: AsyncSession, tenant_id: str, doc_id: str) -> Document | None:
    """The row, locked until the transaction ends (no-op on SQLite, which locks the file)."""
    return await session.scalar(
        select(Document)
        .where(Document.tenant_id == tenant_id, Document.id == doc_id)
        .with_for_update()
    )


async def page(
    session: AsyncSession,
    dialect: Dialect,
    tenant_id: str,
    *,
    collection: str | None,
    tag: str | None,
    after_id: str | None,
    limit: int,
) -> list[Document]:
    """Up to `limit` documents in id (= creation) order, strictly after `after_id`."""
    stmt = select(Document).where(Document.tenant_id == tenant_id)
    if collection is not None:
        stmt = stmt.where(Document.collection == collection)
    if tag is not None:
        stmt = stmt.where(dialect.has_tag(Document.tags, tag))
    if after_id is not None:
        stmt = stmt.where(Document.id > after_id)
    stmt = stmt.order_by(Document.id).limit(limit)
    return list((await session.scalars(stmt)).all())
