"""Callers own the transaction (capstan.db.unit): services flush into it, the outbox event is
in it, and what follows the commit happens only when it commits."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from capstan.db.schema import Document, OutboxEvent, Webhook
from capstan.db.unit import unit_of_work
from capstan.documents.schemas import DocumentCreate, DocumentUpdate
from capstan.webhooks import service as webhooks
from capstan.webhooks.schemas import WebhookCreate
from tests.conftest import Api


class Boom(Exception):
    pass


async def _events(api: Api, doc_id: str) -> list[str]:
    async with api.container.db() as session:
        rows = await session.scalars(
            select(OutboxEvent.routing_key)
            .where(OutboxEvent.subject == f"documents/{doc_id}")
            .order_by(OutboxEvent.id)
        )
        return list(rows)


async def test_a_rolled_back_unit_leaves_no_change_no_event_and_no_invalidation(api: Api) -> None:
    c, tenant = api.container, await api.tenant()
    doc = await c.documents.create_one(
        tenant.id, DocumentCreate(collection="n", title="v1", body="")
    )
    assert (await c.documents.read(tenant.id, doc.id)).version == 1  # now cached
    invalidated: list[Any] = []
    real = c.documents_cache.invalidate

    async def spy(key: str, version: int) -> None:
        invalidated.append((key, version))
        await real(key, version)

    c.documents_cache.invalidate = spy  # type: ignore[method-assign]
    try:
        with pytest.raises(Boom):
            async with unit_of_work(c.db) as uow:
                await c.documents.update(uow, tenant.id, doc.id, DocumentUpdate(title="v2"))
                raise Boom  # the caller's next step failed
        assert invalidated == []
        async with c.db() as session:
            assert (await session.get(Document, doc.id)).title == "v1"  # type: ignore[union-attr]
        assert await _events(api, doc.id) == ["document.created"]

        async with unit_of_work(c.db) as uow:
            await c.documents.update(uow, tenant.id, doc.id, DocumentUpdate(title="v2"))
            assert invalidated == []  # not before the commit
        assert [v for _, v in invalidated] == [2]
        assert await _events(api, doc.id) == ["document.created", "document.updated"]
        view = await c.documents.read(tenant.id, doc.id)
        assert view.version == 2 and view.cache == "miss"
    finally:
        c.documents_cache.invalidate = real  # type: ignore[method-assign]


async def test_changes_of_several_services_commit_together(api: Api) -> None:
    c, tenant = api.container, await api.tenant()
    with pytest.raises(Boom):
        async with unit_of_work(c.db) as uow:
            doc = await c.documents.create(
                uow, tenant.id, DocumentCreate(collection="n", title="a", body="")
            )
            await webhooks.create(
                uow.session,
                tenant.id,
                WebhookCreate(url="https://example.com/hook", patterns=["document.*"]),
                allow_private=False,
            )
            raise Boom
    async with c.db() as session:
        assert await session.get(Document, doc.id) is None
        assert (
            await session.scalar(
                select(func.count()).select_from(Webhook).where(Webhook.tenant_id == tenant.id)
            )
            == 0
        )
    assert await _events(api, doc.id) == []

    async with unit_of_work(c.db) as uow:
        doc = await c.documents.create(
            uow, tenant.id, DocumentCreate(collection="n", title="a", body="")
        )
        await c.documents.delete(uow, tenant.id, doc.id)
    assert await _events(api, doc.id) == ["document.created", "document.deleted"]
