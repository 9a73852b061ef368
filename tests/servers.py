"""Private servers a test may kill (capstan.localcluster), started on free loopback ports: a
binary that is not installed skips the test, or fails it under CAPSTAN_REQUIRE_SERVICES=1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import pytest

from capstan.localcluster import (
    ElasticCluster,
    ElasticNode,
    PostgresPair,
    RabbitCluster,
    RabbitNode,
    SentinelGroup,
    ServerMissing,
    wait_port,
)
from tests.conftest import REQUIRE

__all__ = [
    "ElasticCluster",
    "ElasticNode",
    "PostgresPair",
    "RabbitCluster",
    "RabbitNode",
    "SentinelGroup",
    "missing",
    "started",
    "wait_port",
]


class Startable(Protocol):
    def start(self) -> None: ...


S = TypeVar("S", bound=Startable)


def missing(message: str) -> None:
    """Skip (fail under CAPSTAN_REQUIRE_SERVICES=1) when a server binary is not installed."""
    if REQUIRE:
        pytest.fail(message)
    pytest.skip(message)


def started(factory: Callable[[], S]) -> S:
    """The server built and started, or the test skipped when its binary is missing."""
    try:
        server = factory()
        server.start()
    except ServerMissing as exc:
        missing(str(exc))
        raise
    return server
