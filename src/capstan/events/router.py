"""/v1/events: a tenant's audit log in order, a page at a time (also the polling feed)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from capstan.api.deps import ContainerDep, PrincipalDep
from capstan.events import audit

# seq is a signed 64-bit column: a larger `after` is a 422, not an overflow in the driver.
MAX_SEQ = 2**63 - 1

router = APIRouter(prefix="/v1/events", tags=["events"])


class EventItem(BaseModel):
    seq: int = Field(description="position in the tenant's feed; pass as `after` to resume")
    event: dict[str, Any] = Field(description="the CloudEvents 1.0 envelope")


class EventPage(BaseModel):
    items: list[EventItem]
    next_after: int | None = Field(None, description="`after` for the next page; null at the end")


@router.get("")
async def list_events(
    c: ContainerDep,
    who: PrincipalDep,
    type: Annotated[str | None, Query(max_length=200, description="e.g. document.created")] = None,
    subject: Annotated[str | None, Query(max_length=200, description="e.g. documents/<id>")] = None,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="only events after this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventPage:
    """The tenant's events in the order they were recorded."""
    async with c.db() as session:
        rows = await audit.feed(
            session, who.tenant_id, after=after, limit=limit + 1, type=type, subject=subject
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(
        items=[EventItem(seq=r.seq, event=r.envelope) for r in rows],
        next_after=rows[-1].seq if more and rows else None,
    )
