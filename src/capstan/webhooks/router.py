"""/v1/webhooks: thin handlers over WebhookService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from capstan.api.deps import ContainerDep, PrincipalDep
from capstan.webhooks import service
from capstan.webhooks.schemas import (
    DeliveryPage,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookRead,
)
from capstan.webhooks.service import to_read

# Each handler owns its unit of work: `c.db.begin()` for a write, `c.db()` for a read.
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_webhook(
    body: WebhookCreate, c: ContainerDep, who: PrincipalDep, response: Response
) -> WebhookCreated:
    """Register a webhook; the signing `secret` is in this response and never shown again."""
    async with c.db.begin() as session:
        hook, secret = await service.create(
            session, who.tenant_id, body, allow_private=c.settings.webhook_allow_private
        )
    response.headers["Location"] = f"/v1/webhooks/{hook.id}"
    return WebhookCreated(**to_read(hook).model_dump(), secret=secret)


@router.get("")
async def list_webhooks(c: ContainerDep, who: PrincipalDep) -> WebhookList:
    """The caller's webhooks, oldest first (without secrets)."""
    async with c.db() as session:
        hooks = await service.list_owned(session, who.tenant_id)
    return WebhookList(items=[to_read(h) for h in hooks])


@router.get("/{webhook_id}")
async def get_webhook(webhook_id: str, c: ContainerDep, who: PrincipalDep) -> WebhookRead:
    """One webhook: its status, and why it was disabled if it was."""
    async with c.db() as session:
        return to_read(await service.get(session, who.tenant_id, webhook_id))


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(webhook_id: str, c: ContainerDep, who: PrincipalDep) -> Response:
    """Delete a webhook with its delivery history; nothing more is sent to it."""
    async with c.db.begin() as session:
        await service.delete_owned(session, who.tenant_id, webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/enable")
async def enable_webhook(webhook_id: str, c: ContainerDep, who: PrincipalDep) -> WebhookRead:
    """Re-activate a disabled webhook; its paused pending deliveries are sent again."""
    async with c.db.begin() as session:
        hook = await service.enable(session, who.tenant_id, webhook_id)
    return to_read(hook)


@router.get("/{webhook_id}/deliveries")
async def list_deliveries(
    webhook_id: str,
    c: ContainerDep,
    who: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
) -> DeliveryPage:
    """The webhook's deliveries, newest first, each with every attempt in order."""
    async with c.db() as session:
        return await service.deliveries(
            session, who.tenant_id, webhook_id, limit=limit, cursor=cursor
        )
