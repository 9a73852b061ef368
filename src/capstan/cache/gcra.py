"""The generic cell rate algorithm, shared by the memory limiter and mirrored in Lua."""

from __future__ import annotations

import math

from capstan.cache.port import RateDecision


def gcra(tat: float, now: float, rate_per_minute: int, burst: int) -> tuple[RateDecision, float]:
    """Decide one request given the theoretical arrival time `tat`; returns the new tat."""
    interval = 60.0 / rate_per_minute
    tolerance = interval * (burst - 1)
    tat = max(tat, now)
    new_tat = tat + interval
    allow_at = new_tat - tolerance - interval
    if now < allow_at:
        return RateDecision(False, 0, allow_at - now), tat
    # The epsilon absorbs float error in new_tat - interval - now (0 for a fresh key).
    remaining = math.floor((tolerance - (new_tat - interval - now)) / interval + 1e-9)
    return RateDecision(True, max(remaining, 0), 0.0), new_tat
