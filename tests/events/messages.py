"""Event messages for runner tests, built by the outbox's own envelope and encoder."""

from __future__ import annotations

from capstan.broker.port import Message
from capstan.events.envelope import encode
from capstan.events.outbox import envelope


def document_updated(tenant_id: str, doc_id: str, version: int) -> Message:
    env = envelope(
        source="test",
        entity="document",
        action="updated",
        tenant_id=tenant_id,
        subject=f"documents/{doc_id}",
        data={"id": doc_id, "version": version},
    )
    return Message("document.updated", encode(env), env["id"])
