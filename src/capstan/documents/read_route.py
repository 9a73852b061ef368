"""GET /v1/documents/{doc_id} as a lean route: the cached read without FastAPI's per-request work.

The cached read is the request Capstan serves most, and FastAPI's dependency resolution and
validation cost more than the read itself. `create_app` places this pure-ASGI route ahead of the
FastAPI route of the same path (capstan.documents.router.get_document), which stays the one
OpenAPI describes. Same contracts, fewer steps:

- auth: `Authorization: Bearer` with an API key or a session token (`Authenticator`), 401
  problem+json otherwise; errors are raised and rendered by the app's problem handlers;
- a trusted cache hit costs one Redis command: the rate limit and the read (of an entry of the
  current cache generation) are one script (`RateLimitedReader`); a miss or the cache down
  then goes through `DocumentStore.read` as before (the request counted once), and so do
  no-cache and an unsynced generation (after a failure to reach Redis) after the limiter alone;
- `ETag`, `X-Cache`, `If-None-Match` -> 304; request id, metrics per route and the access log
  come from RequestContextMiddleware, which sees this route's template as usual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from capstan.api.deps import NO_CREDENTIALS, check_rate, enforce
from capstan.auth.service import Principal
from capstan.auth.tokens import bearer_token
from capstan.cache.port import CacheUnavailable
from capstan.documents.cache import document_key
from capstan.documents.router import etag, none_match
from capstan.errors import RateLimited, Unauthorized

if TYPE_CHECKING:
    from capstan.container import Container

PATH = "/v1/documents/{doc_id}"
_JSON = b"application/json"


def document_read_route(container: Container) -> Route:
    """The lean GET route, to be placed ahead of the FastAPI route it stands in for."""
    return LeanRoute(PATH, DocumentReadEndpoint(container), name="get_document")


class LeanRoute(Route):
    """Matches GET only; every other method falls through to the FastAPI routes of the path,
    so HEAD, PATCH, DELETE and the 405 for the rest answer exactly as before."""

    def __init__(self, path: str, endpoint: DocumentReadEndpoint, *, name: str) -> None:
        super().__init__(path, endpoint, methods=["GET"], name=name)
        self.methods = {"GET"}  # Starlette adds HEAD to GET routes; the FastAPI route does not

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.FULL:
            return Match.NONE, {}
        # FastAPI's router does not set scope["route"] for a Starlette route; the middleware
        # reads the route template from it (metrics per route, access log).
        return match, {**child_scope, "route": self}


class DocumentReadEndpoint:
    """The ASGI endpoint of `document_read_route`."""

    def __init__(self, container: Container) -> None:
        self._container = container

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = cache_control = if_none_match = None
        for name, value in scope["headers"]:
            # The first of repeated headers wins, as with Starlette's `headers.get`.
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"cache-control" and cache_control is None:
                cache_control = value.decode("latin-1")
            elif name == b"if-none-match" and if_none_match is None:
                if_none_match = value.decode("latin-1")
        # As refuse_blocked_clients does for the FastAPI routes: a dictionary read.
        client = scope.get("client")
        left = self._container.auth_failures.blocked_for(client[0] if client else "unknown")
        if left:
            raise RateLimited("too many failed authentications from this address", retry_after=left)
        principal = await self._authenticate(authorization)
        bypass = cache_control is not None and "no-cache" in cache_control.lower()
        doc_id: str = scope["path_params"]["doc_id"]
        version, payload, cache = await self._read(principal, doc_id, bypass)
        headers = [(b"etag", etag(version).encode()), (b"x-cache", cache.encode())]
        if none_match(if_none_match, version):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers += [(b"content-length", str(len(payload)).encode()), (b"content-type", _JSON)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _authenticate(self, authorization: str | None) -> Principal:
        # What fastapi.security.HTTPBearer(auto_error=False) accepts, as in capstan.api.deps.
        token = bearer_token(authorization)
        if token is None:
            raise Unauthorized(NO_CREDENTIALS)
        return await self._container.auth.authenticate(token)

    async def _read(self, who: Principal, doc_id: str, bypass: bool) -> tuple[int, bytes, str]:
        """(version, body, X-Cache), rate limit included; NotFound for a missing or foreign id."""
        c = self._container
        # Trust is checked before the fetch (see CacheAside.trusted).
        if not bypass and c.documents_cache.trusted:
            settings = c.settings
            key = document_key(who.tenant_id, doc_id)
            try:
                got = await c.limited_reader.hit_and_get(
                    who.rate_key, settings.rate_limit_per_minute, settings.rate_limit_burst, key
                )
            except CacheUnavailable:
                # Fail open, like the limiter alone; the store's read degrades to the DB.
                c.documents_cache.lost()
            else:
                enforce(c, got.decision)
                if got.entry is not None:
                    loaded = c.documents_cache.hit(got.entry)
                    return loaded.version, loaded.payload, "hit"
                if got.generation is None:
                    c.documents_cache.lost()  # a flushed or new Redis: sync first
        else:
            await check_rate(c, who)
        view = await c.documents.read(who.tenant_id, doc_id, bypass_cache=bypass)
        return view.version, view.payload, view.cache
