"""Capstan's one retry-delay policy: exponential, capped, jittered.

Every retry loop uses it (task retries in the worker, subscriber retry tiers, webhook
deliveries, the relay's broker outages, the embeddings endpoint), so they all back off the same
way and a change of policy is made once."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

# How much of the ceiling a delay may be: "half" keeps each delay at least half its nominal
# value (retries still spread out), "full" anywhere from 0 (callers that failed together do
# not retry together), "none" exactly the ceiling (a single loop, nobody to spread from).
Jitter = Literal["half", "full", "none"]


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float  # the first delay's ceiling, in the caller's unit (seconds or milliseconds)
    cap: float = math.inf
    jitter: Jitter = "half"

    def ceiling(self, attempt: int) -> float:
        """base·2^(attempt-1), at most `cap`; attempt 1 is the first failure."""
        return min(self.cap, self.base * 2.0 ** max(attempt - 1, 0))

    def delay(self, attempt: int, rand: float | None = None) -> float:
        """The wait after `attempt` failures; `rand` in [0, 1] (random.random() when None)."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "none":
            return ceiling
        r = random.random() if rand is None else rand
        if self.jitter == "full":
            return r * ceiling
        return ceiling / 2 + r * ceiling / 2
