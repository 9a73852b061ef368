"""Who is calling: resolves a bearer credential to a tenant, and issues sessions."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from capstan.auth.tokens import api_key_id, digest, is_session_token, new_session_token
from capstan.cache.port import CacheUnavailable, Session, SessionStore
from capstan.db.schema import ApiKey
from capstan.errors import BadRequest, Unauthorized, Unavailable


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    key_id: str
    session_hash: str | None = None  # set when the caller used a session token

    @property
    def rate_key(self) -> str:
        """Rate limits are per API key, whether used directly or through a session."""
        return self.key_id


class Authenticator:
    def __init__(
        self,
        db: async_sessionmaker[Any],
        sessions: SessionStore,
        *,
        session_ttl_seconds: int,
        key_cache_seconds: float,
    ) -> None:
        self._db = db
        self._sessions = sessions
        self._session_ttl = session_ttl_seconds
        self._key_cache_seconds = key_cache_seconds
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def authenticate(self, token: str) -> Principal:
        """The principal behind a bearer token, or Unauthorized."""
        if is_session_token(token):
            return await self._from_session(token)
        return await self._from_api_key(token)

    async def _from_api_key(self, token: str) -> Principal:
        token_hash = digest(token)
        cached = self._verified.get(token_hash)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        key_id = api_key_id(token)
        if key_id is None:
            raise Unauthorized("the bearer token is not a Capstan API key or session token")
        async with self._db() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.id == key_id))
        if (
            row is None
            or row.revoked_at is not None
            or not hmac.compare_digest(row.key_hash, token_hash)
        ):
            raise Unauthorized("the API key is unknown or revoked")
        principal = Principal(row.tenant_id, row.id)
        if self._key_cache_seconds > 0:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[token_hash] = (principal, time.monotonic() + self._key_cache_seconds)
        return principal

    async def _from_session(self, token: str) -> Principal:
        token_hash = digest(token)
        try:
            found = await self._sessions.get(token_hash)
        except CacheUnavailable as exc:
            raise Unavailable("the session store is unavailable; use an API key") from exc
        if found is None:
            raise Unauthorized("the session token is unknown, expired or revoked")
        return Principal(found.tenant_id, found.key_id, token_hash)

    async def open_session(self, principal: Principal) -> tuple[str, int]:
        """A new session token for the caller's key, and its lifetime in seconds."""
        token = new_session_token()
        try:
            await self._sessions.put(
                digest(token),
                Session(principal.tenant_id, principal.key_id, time.time()),
                self._session_ttl,
            )
        except CacheUnavailable as exc:
            raise Unavailable("the session store is unavailable") from exc
        return token, self._session_ttl

    async def close_session(self, principal: Principal) -> None:
        if principal.session_hash is None:
            # Authenticated, so not a 401: the request names no session to revoke.
            raise BadRequest(
                "this request was made with an API key, not a session token: "
                "DELETE /v1/sessions/current revokes the session token it is called with"
            )
        try:
            await self._sessions.delete(principal.session_hash)
        except CacheUnavailable as exc:
            raise Unavailable("the session store is unavailable") from exc
