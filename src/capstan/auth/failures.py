"""Failed authentication, rate limited per client address.

Only failures touch the shared limiter (a 401 is about to be answered anyway), so a
successful request gains no round trip. Once an address is over its limit, every instance
that sees it fail remembers the block in-process until it ends: later requests from that
address are refused before any key lookup, by a dictionary read.
"""

from __future__ import annotations

import time

from fastapi import Request

from capstan.cache.port import CacheUnavailable, RateLimiter
from capstan.errors import RateLimited


class FailedAuthLimiter:
    def __init__(self, limiter: RateLimiter, *, per_minute: int, burst: int) -> None:
        self._limiter = limiter
        self._per_minute = per_minute
        self._burst = burst
        self._blocked_until: dict[str, float] = {}

    def blocked_for(self, address: str) -> float:
        """Seconds this address remains refused here (0 when it is not)."""
        until = self._blocked_until.get(address)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked_until[address]
            return 0.0
        return left

    async def record(self, address: str) -> float:
        """Count one failure; seconds the address is now refused for (0: still allowed)."""
        try:
            decision = await self._limiter.hit(f"authfail:{address}", self._per_minute, self._burst)
        except CacheUnavailable:
            return 0.0  # failing open, as the per-key limiter does
        if decision.allowed:
            return 0.0
        if len(self._blocked_until) > 10_000:
            self._blocked_until.clear()  # bounded: an address flood cannot grow it forever
        self._blocked_until[address] = time.monotonic() + decision.retry_after
        return decision.retry_after


def client_address(request: Request) -> str:
    """The caller's address (uvicorn resolves X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client else "unknown"


async def refuse_blocked_clients(request: Request) -> None:
    """A router dependency: 429 for an address over its failed-authentication limit."""
    failures: FailedAuthLimiter = request.app.state.container.auth_failures
    left = failures.blocked_for(client_address(request))
    if left:
        raise RateLimited("too many failed authentications from this address", retry_after=left)
