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
from capstan.db.schema import ApiKey, Tenant
from capstan.errors import BadRequest, Unauthorized, Unavailable


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    key_id: str
    session_hash: str | None = None  # set when the caller used a session token
    admin: bool = False  # the operator scope: only an API key itself carries it
    expires_at: float | None = None  # the key's expiry (Unix time), if it has one

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
        # Keys revoked lately (key id → when we learned it), checked in-process on every use:
        # a cache entry filled from a read that raced the revocation still cannot be used.
        self._revoked: dict[str, float] = {}

    async def authenticate(self, token: str) -> Principal:
        """The principal behind a bearer token, or Unauthorized."""
        if is_session_token(token):
            return await self._from_session(token)
        return await self._from_api_key(token)

    async def _from_api_key(self, token: str) -> Principal:
        token_hash = digest(token)
        cached = self._verified.get(token_hash)
        if cached is not None and cached[1] > time.monotonic():
            return self._usable(cached[0])
        key_id = api_key_id(token)
        if key_id is None:
            raise Unauthorized("the bearer token is not a Capstan API key or session token")
        async with self._db() as session:
            found = (
                await session.execute(
                    select(ApiKey, Tenant.disabled_at)
                    .join(Tenant, Tenant.id == ApiKey.tenant_id)
                    .where(ApiKey.id == key_id)
                )
            ).first()
        if found is None or not hmac.compare_digest(found[0].key_hash, token_hash):
            raise Unauthorized("the API key is unknown or revoked")
        row, disabled_at = found
        if row.revoked_at is not None or disabled_at is not None:
            raise Unauthorized("the API key is unknown or revoked")
        expires = row.expires_at.timestamp() if row.expires_at is not None else None
        principal = self._usable(Principal(row.tenant_id, row.id, None, row.admin, expires))
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
        if found is None or found.key_id in self._revoked:
            raise Unauthorized("the session token is unknown, expired or revoked")
        return Principal(found.tenant_id, found.key_id, token_hash)

    def _usable(self, principal: Principal) -> Principal:
        """The principal, unless its key was revoked lately or has expired (in-process)."""
        if principal.key_id in self._revoked:
            raise Unauthorized("the API key is unknown or revoked")
        if principal.expires_at is not None and principal.expires_at <= time.time():
            raise Unauthorized("the API key has expired")
        return principal

    def forget(self, key_ids: list[str]) -> None:
        """Stop accepting `key_ids` from this process's cache at once (they were revoked).

        Remembered for twice the key cache lifetime: past that, no cache entry filled before
        the revocation is left, and the database answers for the key again."""
        now = time.monotonic()
        horizon = now - 2 * max(self._key_cache_seconds, 1.0)
        for key_id, seen in list(self._revoked.items()):
            if seen < horizon:
                del self._revoked[key_id]
        gone = set(key_ids)
        for key_id in gone:
            self._revoked[key_id] = now
        for token_hash, (principal, _) in list(self._verified.items()):
            if principal.key_id in gone:
                self._verified.pop(token_hash, None)

    def remember_again(self, key_ids: list[str]) -> None:
        """Undo `forget` for keys that work again (their tenant was enabled)."""
        for key_id in key_ids:
            self._revoked.pop(key_id, None)

    async def open_session(self, principal: Principal) -> tuple[str, int]:
        """A new session token for the caller's key, and its lifetime in seconds."""
        token = new_session_token()
        ttl = self._session_ttl
        if principal.expires_at is not None:  # a session never outlives its key
            ttl = min(ttl, int(principal.expires_at - time.time()))
            if ttl < 1:
                raise Unauthorized("the API key has expired")
        token_hash = digest(token)
        try:
            await self._sessions.put(
                token_hash, Session(principal.tenant_id, principal.key_id, time.time()), ttl
            )
            # Indexed after it exists: a revocation racing this call misses it here, but every
            # instance's watcher deletes the key's sessions again once it sees the revocation.
            await self._sessions.index_for_key(principal.key_id, token_hash, ttl)
        except CacheUnavailable as exc:
            raise Unavailable("the session store is unavailable") from exc
        return token, ttl

    async def close_key_sessions(self, key_id: str) -> int:
        """Delete every session opened with `key_id` (it was revoked); how many."""
        return await self._sessions.delete_for_key(key_id)

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
