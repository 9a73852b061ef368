"""The event loop every long-running Capstan process runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed (it comes with uvicorn[standard], which
    `capstan api` already runs on). The worker, relay and subscribers spend much of their CPU
    writing small frames to sockets (acks, confirms, Redis and PostgreSQL round trips), which
    uvloop does in C."""
    try:
        import uvloop
    except ImportError:
        runner = asyncio.Runner()
    else:
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        return runner.run(coro)
