"""API key and tenant lifecycle: create, list, revoke, rotate with overlap, disable, delete.

Shared by the admin API and `capstan keys|tenants`, which own the unit of work. Each operation
adds its change with an `auth_revocations` row for every key it ends; once the caller's
transaction commits, this process forgets those keys and deletes their sessions at once, and
every other API instance does the same when its RevocationWatcher next polls
(auth/revocations.py): the bound is CAPSTAN_AUTH_REVOCATION_POLL_SECONDS, with no extra work
on a successful request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.auth.tokens import new_api_key
from capstan.cache.port import CacheUnavailable
from capstan.db.schema import (
    ApiKey,
    AuditEntry,
    AuthRevocation,
    Document,
    OutboxEvent,
    Task,
    TaskEffect,
    Tenant,
)
from capstan.db.unit import UnitOfWork
from capstan.documents.cache import document_key
from capstan.errors import Conflict, NotFound
from capstan.ids import uuid7
from capstan.search.port import Removal

if TYPE_CHECKING:
    from capstan.auth.service import Authenticator
    from capstan.cache.port import VersionedCache
    from capstan.search.port import SearchEngine

log = logging.getLogger(__name__)

# Revocation rows are only needed until every instance has polled past them.
REVOCATION_RETENTION = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class KeyView:
    id: str
    tenant_id: str
    name: str
    admin: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class TenantView:
    id: str
    name: str
    created_at: datetime
    disabled_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewKey:
    key: KeyView
    plaintext: str  # shown once, never stored


def key_view(row: ApiKey) -> KeyView:
    return KeyView(
        row.id, row.tenant_id, row.name, row.admin, row.created_at, row.expires_at, row.revoked_at
    )


def tenant_view(row: Tenant) -> TenantView:
    return TenantView(row.id, row.name, row.created_at, row.disabled_at)


class Lifecycle:
    """Tenant and key operations in the caller's unit of work (capstan.db.unit): writes take
    the caller's `UnitOfWork` and forget revoked keys once it has committed; reads take a
    session."""

    def __init__(
        self,
        auth: Authenticator,
        cache: VersionedCache,
        search: SearchEngine,
        *,
        cache_ttl_seconds: int,
    ) -> None:
        self._auth = auth
        self._cache = cache
        self._search = search
        self._cache_ttl_seconds = cache_ttl_seconds

    # --- tenants ---------------------------------------------------------------------

    async def list_tenants(self, session: AsyncSession) -> list[TenantView]:
        rows = await session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id))
        return [tenant_view(t) for t in rows]

    async def create_tenant(self, uow: UnitOfWork, name: str) -> tuple[TenantView, NewKey]:
        """A tenant with its first (non-admin) key."""
        session = uow.session
        if await session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
            raise Conflict(f"a tenant named {name!r} already exists")
        tenant = Tenant(id=uuid7(), name=name, created_at=datetime.now(UTC))
        session.add(tenant)
        await session.flush()
        key = await self._add_key(session, tenant.id, "default", admin=False, expires_at=None)
        return tenant_view(tenant), key

    async def tenant(self, session: AsyncSession, id_or_name: str) -> TenantView:
        return tenant_view(await _tenant(session, id_or_name))

    async def disable_tenant(self, uow: UnitOfWork, id_or_name: str) -> TenantView:
        """Every key and session of the tenant stops working; its data stays."""
        now = datetime.now(UTC)
        tenant = await _tenant(uow.session, id_or_name, lock=True)
        tenant.disabled_at = tenant.disabled_at or now
        keys = await self._tenant_keys(uow.session, tenant.id)
        await _stage_revocations(uow.session, keys, tenant.id, now)
        await uow.session.flush()
        uow.after_commit(lambda: self._forget(keys))
        return tenant_view(tenant)

    async def enable_tenant(self, uow: UnitOfWork, id_or_name: str) -> TenantView:
        """Its keys that are neither revoked nor expired work again (within 2 x the key
        cache lifetime on instances that saw the disable)."""
        tenant = await _tenant(uow.session, id_or_name, lock=True)
        tenant.disabled_at = None
        keys = await self._tenant_keys(uow.session, tenant.id)
        await uow.session.flush()
        uow.after_commit(lambda: self._auth.remember_again(keys))
        return tenant_view(tenant)

    async def delete_tenant(self, uow: UnitOfWork, id_or_name: str) -> dict[str, int]:
        """The tenant and all its data: documents (and their search and cache entries), tasks,
        webhooks with their deliveries, events, audit log, keys and sessions."""
        now = datetime.now(UTC)
        session = uow.session
        tenant = await _tenant(session, id_or_name, lock=True)
        keys = await self._tenant_keys(session, tenant.id)
        docs = list(
            await session.execute(
                select(Document.id, Document.version).where(Document.tenant_id == tenant.id)
            )
        )
        task_ids = select(Task.id).where(Task.tenant_id == tenant.id).scalar_subquery()
        await session.execute(delete(TaskEffect).where(TaskEffect.task_id.in_(task_ids)))
        # Unpublished events would re-create what is deleted (an indexer adding documents).
        await session.execute(delete(OutboxEvent).where(OutboxEvent.tenant_id == tenant.id))
        await session.execute(delete(AuditEntry).where(AuditEntry.tenant_id == tenant.id))
        await session.delete(tenant)  # documents, keys, tasks, webhooks: ON DELETE CASCADE
        await _stage_revocations(session, keys, tenant.id, now)
        await session.flush()

        async def gone() -> None:
            await self._forget(keys)
            for doc_id, version in docs:
                await self._cache.invalidate(
                    document_key(tenant.id, doc_id), version + 1, self._cache_ttl_seconds
                )
            if docs and self._search.derived:  # the database search engines went with the rows
                await self._search.delete([Removal(tenant.id, d, v) for d, v in docs])

        uow.after_commit(gone)
        return {"documents": len(docs), "keys": len(keys)}

    # --- keys ------------------------------------------------------------------------

    async def list_keys(self, session: AsyncSession, tenant: str | None = None) -> list[KeyView]:
        stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if tenant is not None:
            stmt = stmt.where(ApiKey.tenant_id == (await _tenant(session, tenant)).id)
        return [key_view(k) for k in await session.scalars(stmt)]

    async def create_key(
        self,
        uow: UnitOfWork,
        tenant: str,
        name: str,
        *,
        admin: bool = False,
        expires_at: datetime | None = None,
    ) -> NewKey:
        tenant_id = (await _tenant(uow.session, tenant)).id
        return await self._add_key(uow.session, tenant_id, name, admin=admin, expires_at=expires_at)

    async def revoke_key(self, uow: UnitOfWork, key_id: str) -> KeyView:
        now = datetime.now(UTC)
        key = await _key(uow.session, key_id)
        if key.revoked_at is None:
            key.revoked_at = now
            await _stage_revocations(uow.session, [key.id], key.tenant_id, now)
            await uow.session.flush()
        uow.after_commit(lambda: self._forget([key.id]))
        return key_view(key)

    async def rotate_key(
        self, uow: UnitOfWork, key_id: str, overlap_seconds: float
    ) -> tuple[KeyView, NewKey]:
        """A new key with the same tenant, name and scope; the old one keeps working for
        `overlap_seconds` (its sessions too), then stops."""
        now = datetime.now(UTC)
        ends = now + timedelta(seconds=overlap_seconds)
        session = uow.session
        old = await _key(session, key_id)
        if old.revoked_at is not None:
            raise Conflict(f"API key {key_id} is revoked; create a new one instead")
        if old.expires_at is None or old.expires_at > ends:
            old.expires_at = ends
        new = await self._add_key(
            session, old.tenant_id, old.name, admin=old.admin, expires_at=None
        )
        await _stage_revocations(session, [old.id], old.tenant_id, old.expires_at)
        await session.flush()
        if overlap_seconds <= 0:
            uow.after_commit(lambda: self._forget([old.id]))
        return key_view(old), new

    # --- internals -------------------------------------------------------------------

    async def _add_key(
        self,
        session: AsyncSession,
        tenant_id: str,
        name: str,
        *,
        admin: bool,
        expires_at: datetime | None,
    ) -> NewKey:
        key = new_api_key()
        row = ApiKey(
            id=key.key_id,
            tenant_id=tenant_id,
            name=name,
            key_hash=key.key_hash,
            created_at=datetime.now(UTC),
            expires_at=expires_at,
            admin=admin,
        )
        session.add(row)
        await session.flush()
        return NewKey(key_view(row), key.plaintext)

    async def _tenant_keys(self, session: AsyncSession, tenant_id: str) -> list[str]:
        return list(await session.scalars(select(ApiKey.id).where(ApiKey.tenant_id == tenant_id)))

    async def _forget(self, key_ids: list[str]) -> None:
        """This process stops accepting the keys and their sessions now (the others when
        their watchers poll, which also retries the session deletion if Redis was down)."""
        self._auth.forget(key_ids)
        for key_id in key_ids:
            try:
                await self._auth.close_key_sessions(key_id)
            except CacheUnavailable:
                log.warning("sessions of a revoked key not deleted yet", extra={"key": key_id})


async def _stage_revocations(
    session: AsyncSession, key_ids: list[str], tenant_id: str, effective_at: datetime
) -> None:
    # Rows every instance has long applied go first: the table stays small.
    cutoff = datetime.now(UTC) - REVOCATION_RETENTION
    await session.execute(delete(AuthRevocation).where(AuthRevocation.effective_at < cutoff))
    for key_id in key_ids:
        session.add(AuthRevocation(key_id=key_id, tenant_id=tenant_id, effective_at=effective_at))


async def _tenant(session: AsyncSession, id_or_name: str, *, lock: bool = False) -> Tenant:
    # By id first: a tenant may be named like another one's id.
    for column in (Tenant.id, Tenant.name):
        stmt = select(Tenant).where(column == id_or_name)
        if lock:
            stmt = stmt.with_for_update()
        tenant = await session.scalar(stmt)
        if tenant is not None:
            return tenant
    raise NotFound(f"no tenant {id_or_name!r}")


async def _key(session: AsyncSession, key_id: str) -> ApiKey:
    key = await session.scalar(select(ApiKey).where(ApiKey.id == key_id).with_for_update())
    if key is None:
        raise NotFound(f"no API key {key_id!r}")
    return key
