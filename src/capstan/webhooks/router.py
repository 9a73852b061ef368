"""/v1/webhooks: thin handlers over WebhookService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from capstan.api.deps import ContainerDep, PrincipalDep
from capstan.webhooks.schemas import (
    DeliveryPage,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookRead,
)
from capstan.webhooks.service import WebhookService, to_read

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def get_service(c: ContainerDep) -> WebhookService:
    return WebhookService(c.db, c.settings)


ServiceDep = Annotated[WebhookService, Depends(get_service)]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_webhook(
    body: WebhookCreate, service: ServiceDep, who: PrincipalDep, response: Response
) -> WebhookCreated:
    """Register a webhook; the signing `secret` is in this response and never shown again."""
    hook, secret = await service.create(who.tenant_id, body)
    response.headers["Location"] = f"/v1/webhooks/{hook.id}"
    return WebhookCreated(**to_read(hook).model_dump(), secret=secret)


@router.get("")
async def list_webhooks(service: ServiceDep, who: PrincipalDep) -> WebhookList:
    """The caller's webhooks, oldest first (without secrets)."""
    return WebhookList(items=[to_read(h) for h in await service.list(who.tenant_id)])


@router.get("/{webhook_id}")
async def get_webhook(webhook_id: str, service: ServiceDep, who: PrincipalDep) -> WebhookRead:
    """One webhook: its status, and why it was disabled if it was."""
    return to_read(await service.get(who.tenant_id, webhook_id))


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(webhook_id: str, service: ServiceDep, who: PrincipalDep) -> Response:
    """Delete a webhook with its delivery history; nothing more is sent to it."""
    await service.delete(who.tenant_id, webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/enable")
async def enable_webhook(webhook_id: str, service: ServiceDep, who: PrincipalDep) -> WebhookRead:
    """Re-activate a disabled webhook; its paused pending deliveries are sent again."""
    return to_read(await service.enable(who.tenant_id, webhook_id))


@router.get("/{webhook_id}/deliveries")
async def list_deliveries(
    webhook_id: str,
    service: ServiceDep,
    who: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
) -> DeliveryPage:
    """The webhook's deliveries, newest first, each with every attempt in order."""
    return await service.deliveries(who.tenant_id, webhook_id, limit=limit, cursor=cursor)
