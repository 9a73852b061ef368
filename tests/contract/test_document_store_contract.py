"""DocumentStore and its repository on every database: SQLite and PostgreSQL.

Each write commits the row and its outbox event together, or neither: in its caller's unit of
work (capstan.db.unit), or on its own (`create_one`).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from capstan.db.schema import Document, OutboxEvent
from capstan.db.unit import unit_of_work
from capstan.documents.schemas import DocumentCreate, DocumentUpdate
from capstan.errors import NotFound, PreconditionFailed
from tests.conftest import Api

# The `api` fixture (tests/conftest.py) runs each test on SQLite and on PostgreSQL.


async def _update(api: Api, tenant_id: str, doc_id: str, patch: DocumentUpdate, **kw: Any) -> Any:
    """An update as the caller's whole unit of work (as the API's PATCH does it)."""
    async with unit_of_work(api.container.db) as uow:
        return await api.container.documents.update(uow, tenant_id, doc_id, patch, **kw)


async def _delete(api: Api, tenant_id: str, doc_id: str, **kw: Any) -> None:
    async with unit_of_work(api.container.db) as uow:
        await api.container.documents.delete(uow, tenant_id, doc_id, **kw)


async def _events(api: Api, doc_id: str) -> list[str]:
    async with api.container.db() as session:
        rows = await session.scalars(
            select(OutboxEvent.routing_key)
            .where(OutboxEvent.subject == f"documents/{doc_id}")
            .order_by(OutboxEvent.id)
        )
        return list(rows)


async def test_each_write_stages_one_cloudevent_in_the_same_transaction(api: Api) -> None:
    tenant = await api.tenant()
    store = api.container.documents
    doc = await store.create_one(tenant.id, DocumentCreate(body="b", tags=["x"]))
    await _update(api, tenant.id, doc.id, DocumentUpdate(title="t"), if_match=1)
    await _delete(api, tenant.id, doc.id, if_match=2)
    assert await _events(api, doc.id) == [
        "document.created",
        "document.updated",
        "document.deleted",
    ]

    async with api.container.db() as session:
        event = await session.scalar(
            select(OutboxEvent).where(OutboxEvent.subject == f"documents/{doc.id}").limit(1)
        )
    assert event is not None and event.published_at is None
    envelope = event.envelope
    assert envelope["specversion"] == "1.0"
    assert envelope["type"] == "capstan.document.created"
    assert envelope["tenantid"] == tenant.id
    assert envelope["subject"] == f"documents/{doc.id}"
    assert envelope["data"]["version"] == 1
    assert envelope["id"] == event.event_id


async def test_a_refused_write_leaves_nothing_behind(api: Api) -> None:
    tenant = await api.tenant()
    store = api.container.documents
    doc = await store.create_one(tenant.id, DocumentCreate(body="b"))
    with pytest.raises(PreconditionFailed):
        await _update(api, tenant.id, doc.id, DocumentUpdate(body="c"), if_match=5)
    with pytest.raises(PreconditionFailed):
        await _delete(api, tenant.id, doc.id, if_match=5)
    with pytest.raises(NotFound):
        await _update(api, tenant.id, "00000000-0000-7000-8000-000000000000", DocumentUpdate())
    assert await _events(api, doc.id) == ["document.created"]
    view = await store.read(tenant.id, doc.id)
    assert view.version == 1


async def test_reads_and_lists_are_scoped_to_the_tenant(api: Api) -> None:
    a, b = await api.tenant(), await api.tenant()
    store = api.container.documents
    doc = await store.create_one(a.id, DocumentCreate(body="a"))
    with pytest.raises(NotFound):
        await store.read(b.id, doc.id)
    rows, cursor = await store.list(b.id, collection=None, tag=None, cursor=None, limit=10)
    assert (rows, cursor) == ([], None)
    async with api.container.db() as session:
        count = await session.scalar(
            select(func.count()).select_from(Document).where(Document.tenant_id == a.id)
        )
    assert count == 1


async def test_versions_increase_by_one_per_update_and_timestamps_are_utc(api: Api) -> None:
    tenant = await api.tenant()
    store = api.container.documents
    doc = await store.create_one(tenant.id, DocumentCreate(body="b"))
    for expected in range(2, 6):
        updated = await _update(api, tenant.id, doc.id, DocumentUpdate(body=str(expected)))
        assert updated.version == expected
    rows, _ = await store.list(tenant.id, collection=None, tag=None, cursor=None, limit=10)
    assert rows[0].version == 5
    assert rows[0].updated_at.tzinfo is not None and rows[0].updated_at >= rows[0].created_at
