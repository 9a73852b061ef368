"""Creating tenants and their API keys (the caller owns the transaction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.auth.tokens import new_api_key
from capstan.db.schema import ApiKey, Tenant
from capstan.errors import Conflict, NotFound
from capstan.ids import uuid7


@dataclass(frozen=True, slots=True)
class CreatedTenant:
    tenant_id: str
    name: str
    api_key: str  # plaintext, shown once


async def create_tenant(session: AsyncSession, name: str) -> CreatedTenant:
    """A new tenant with its first API key."""
    if await session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise Conflict(f"a tenant named {name!r} already exists")
    tenant = Tenant(id=uuid7(), name=name, created_at=datetime.now(UTC))
    session.add(tenant)
    await session.flush()
    key = await add_api_key(session, tenant.id, "default")
    return CreatedTenant(tenant.id, name, key)


async def add_api_key(session: AsyncSession, tenant_id: str, name: str) -> str:
    """A new API key for `tenant_id`; returns the plaintext, which is not stored."""
    key = new_api_key()
    session.add(
        ApiKey(
            id=key.key_id,
            tenant_id=tenant_id,
            name=name,
            key_hash=key.key_hash,
            created_at=datetime.now(UTC),
        )
    )
    await session.flush()
    return key.plaintext


async def tenant_by_name(session: AsyncSession, name: str) -> Tenant:
    tenant = await session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}")
    return tenant
