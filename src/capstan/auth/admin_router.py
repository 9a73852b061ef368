"""/v1/admin: tenants and API keys, for admin-scoped keys (thin handlers over Lifecycle)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from capstan.api.deps import ContainerDep
from capstan.auth.admin import AdminDep
from capstan.auth.lifecycle import KeyView, Lifecycle, NewKey, TenantView
from capstan.db.unit import unit_of_work
from capstan.storable import StorableInput

router = APIRouter(prefix="/v1/admin", tags=["admin"])

MAX_OVERLAP_SECONDS = 30 * 86_400
NAME = Field(..., min_length=1, max_length=200)


class TenantRead(BaseModel):
    id: str
    name: str
    status: str = Field(description="active | disabled")
    created_at: datetime
    disabled_at: datetime | None


class KeyRead(BaseModel):
    id: str
    tenant_id: str
    name: str
    admin: bool
    status: str = Field(description="active | expired | revoked")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    api_key: str = Field(description="the key itself: shown only in this response")


class TenantCreated(TenantRead):
    api_key: KeyCreated


class TenantCreate(StorableInput):
    model_config = ConfigDict(extra="forbid")
    name: str = NAME


class KeyCreate(StorableInput):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(..., min_length=1, max_length=200, description="tenant id or name")
    name: str = NAME
    admin: bool = False
    expires_in_seconds: float | None = Field(None, gt=0, le=10 * 365 * 86_400)


class KeyRotate(StorableInput):
    model_config = ConfigDict(extra="forbid")
    overlap_seconds: float = Field(
        3600, ge=0, le=MAX_OVERLAP_SECONDS, description="how long the old key keeps working"
    )


class KeyRotated(BaseModel):
    old: KeyRead
    new: KeyCreated


def get_lifecycle(c: ContainerDep) -> Lifecycle:
    return c.lifecycle


LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]


def tenant_read(t: TenantView) -> TenantRead:
    state = "disabled" if t.disabled_at else "active"
    return TenantRead(
        id=t.id, name=t.name, status=state, created_at=t.created_at, disabled_at=t.disabled_at
    )


def key_read(k: KeyView) -> KeyRead:
    return KeyRead(
        id=k.id,
        tenant_id=k.tenant_id,
        name=k.name,
        admin=k.admin,
        status=k.status,
        created_at=k.created_at,
        expires_at=k.expires_at,
        revoked_at=k.revoked_at,
    )


def key_created(new: NewKey) -> KeyCreated:
    return KeyCreated(**key_read(new.key).model_dump(), api_key=new.plaintext)


@router.get("/tenants")
async def list_tenants(life: LifecycleDep, c: ContainerDep, _: AdminDep) -> list[TenantRead]:
    """Every tenant."""
    async with c.db() as session:
        return [tenant_read(t) for t in await life.list_tenants(session)]


@router.post("/tenants", status_code=status.HTTP_201_CREATED)
async def create_tenant(
    body: TenantCreate, life: LifecycleDep, c: ContainerDep, _: AdminDep
) -> TenantCreated:
    """A tenant and its first API key (shown once)."""
    async with unit_of_work(c.db) as uow:
        tenant, key = await life.create_tenant(uow, body.name)
    return TenantCreated(**tenant_read(tenant).model_dump(), api_key=key_created(key))


@router.post("/tenants/{tenant}/disable")
async def disable_tenant(
    tenant: str, life: LifecycleDep, c: ContainerDep, _: AdminDep
) -> TenantRead:
    """Its keys and sessions stop working (every instance within the revocation poll)."""
    async with unit_of_work(c.db) as uow:
        done = await life.disable_tenant(uow, tenant)
    return tenant_read(done)


@router.post("/tenants/{tenant}/enable")
async def enable_tenant(
    tenant: str, life: LifecycleDep, c: ContainerDep, _: AdminDep
) -> TenantRead:
    """Its unrevoked, unexpired keys work again."""
    async with unit_of_work(c.db) as uow:
        done = await life.enable_tenant(uow, tenant)
    return tenant_read(done)


@router.delete("/tenants/{tenant}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_tenant(tenant: str, life: LifecycleDep, c: ContainerDep, _: AdminDep) -> Response:
    """Delete the tenant with all its data; its keys and sessions stop working."""
    async with unit_of_work(c.db) as uow:
        await life.delete_tenant(uow, tenant)
    return Response(status_code=204)


@router.get("/keys")
async def list_keys(
    life: LifecycleDep,
    c: ContainerDep,
    _: AdminDep,
    tenant: Annotated[str | None, Query(max_length=200, description="id or name")] = None,
) -> list[KeyRead]:
    """API keys (never the keys themselves: only their hashes are stored)."""
    async with c.db() as session:
        return [key_read(k) for k in await life.list_keys(session, tenant)]


@router.post("/keys", status_code=status.HTTP_201_CREATED)
async def create_key(
    body: KeyCreate, life: LifecycleDep, c: ContainerDep, _: AdminDep
) -> KeyCreated:
    """A new API key for a tenant (shown once), optionally expiring, optionally admin."""
    expires = None
    if body.expires_in_seconds is not None:
        expires = datetime.now(UTC) + timedelta(seconds=body.expires_in_seconds)
    async with unit_of_work(c.db) as uow:
        new = await life.create_key(
            uow, body.tenant, body.name, admin=body.admin, expires_at=expires
        )
    return key_created(new)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, life: LifecycleDep, c: ContainerDep, _: AdminDep) -> KeyRead:
    """The key and its sessions stop working (every instance within the revocation poll)."""
    async with unit_of_work(c.db) as uow:
        key = await life.revoke_key(uow, key_id)
    return key_read(key)


@router.post("/keys/{key_id}/rotate", status_code=status.HTTP_201_CREATED)
async def rotate_key(
    key_id: str, body: KeyRotate, life: LifecycleDep, c: ContainerDep, _: AdminDep
) -> KeyRotated:
    """A replacement key; the old one keeps working for `overlap_seconds`, then stops."""
    async with unit_of_work(c.db) as uow:
        old, new = await life.rotate_key(uow, key_id, body.overlap_seconds)
    return KeyRotated(old=key_read(old), new=key_created(new))
