"""/v1/sessions: exchange an API key for a revocable session token."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from capstan.api.deps import ContainerDep, PrincipalDep
from capstan.errors import Unauthorized

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


class SessionCreated(BaseModel):
    token: str
    token_type: str = "Bearer"
    expires_in: int
    tenant_id: str


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_session(c: ContainerDep, who: PrincipalDep) -> SessionCreated:
    """A session token (use it as a bearer token) for the calling API key."""
    if who.session_hash is not None:
        raise Unauthorized("create sessions with an API key, not with another session")
    token, ttl = await c.auth.open_session(who)
    return SessionCreated(token=token, expires_in=ttl, tenant_id=who.tenant_id)


@router.delete(
    "/current",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={400: {"description": "Bad Request: the call was made with an API key"}},
)
async def revoke_session(c: ContainerDep, who: PrincipalDep) -> Response:
    """Revoke the session token this request was made with."""
    await c.auth.close_session(who)
    return Response(status_code=204)
