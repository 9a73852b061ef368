"""Reads of the audit log (`audit_log`, written by subscribers/audit.py): a tenant's feed."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from capstan.db.schema import AuditEntry
from capstan.events.envelope import TYPE_PREFIX


async def feed(
    session: AsyncSession,
    tenant_id: str,
    *,
    after: int,
    limit: int,
    type: str | None = None,
    subject: str | None = None,
) -> list[AuditEntry]:
    """Up to `limit` of the tenant's entries after `after`, in recorded order; `type` with
    or without the `io.capstan.` prefix."""
    stmt = select(AuditEntry).where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq > after)
    if type:
        full = type if type.startswith(TYPE_PREFIX) else TYPE_PREFIX + type
        stmt = stmt.where(AuditEntry.type == full)
    if subject:
        stmt = stmt.where(AuditEntry.subject == subject)
    return list(await session.scalars(stmt.order_by(AuditEntry.seq).limit(limit)))
