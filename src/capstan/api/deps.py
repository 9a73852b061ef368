"""FastAPI dependencies: the container and the authenticated, rate-limited caller."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from capstan.auth.service import Principal
from capstan.cache.port import CacheUnavailable, RateDecision
from capstan.container import Container
from capstan.errors import RateLimited, Unauthorized

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="An API key or a session token.")


async def get_container(request: Request) -> Container:
    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool, per request.
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


async def get_principal(
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, authenticated and within its rate limit."""
    if credentials is None:
        raise Unauthorized(NO_CREDENTIALS)
    principal = await container.auth.authenticate(credentials.credentials)
    await check_rate(container, principal)
    return principal


NO_CREDENTIALS = "send `Authorization: Bearer <api key or session token>`"


async def check_rate(container: Container, principal: Principal) -> None:
    """Count one request against the caller's limit; RateLimited when it is exceeded."""
    settings = container.settings
    try:
        decision = await container.rate_limiter.hit(
            principal.rate_key, settings.rate_limit_per_minute, settings.rate_limit_burst
        )
    except CacheUnavailable:
        # Failing open: an unavailable limiter must not take the API down with it.
        return
    enforce(container, decision)


def enforce(container: Container, decision: RateDecision) -> None:
    """Raise RateLimited (429, Retry-After) when the limiter said no."""
    if not decision.allowed:
        container.metrics.rate_limited.inc()
        raise RateLimited(
            f"rate limit of {container.settings.rate_limit_per_minute}/min exceeded for this key",
            retry_after=decision.retry_after,
        )


PrincipalDep = Annotated[Principal, Depends(get_principal)]
