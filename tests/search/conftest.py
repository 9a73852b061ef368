"""A running stack (API + relay + subscribers) whose search is Elasticsearch in production
mode (a private alias per test) and SQLite FTS5 embedded."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from capstan.search.elasticsearch import ElasticsearchEngine
from capstan.search.reconcile import ReconcileReport, reconcile
from tests.conftest import Stack, service_url, stack_settings, start_stack, stop_stack

PRODUCTION = pytest.param(
    "production",
    marks=[
        pytest.mark.postgres,
        pytest.mark.redis,
        pytest.mark.rabbitmq,
        pytest.mark.elasticsearch,
    ],
)


async def open_stack(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, **overrides: Any
) -> Stack:
    settings = stack_settings(mode, request, tmp_path)
    if mode == "production":
        settings = settings.model_copy(
            update={
                "search_url": service_url("elasticsearch"),
                "search_index": f"test-{uuid.uuid4().hex[:10]}",
                "search_retry_seconds": 0.5,
                "search_indexer_max_attempts": 10_000,
                "search_reconcile_seconds": 0,
                "search_reconcile_grace_seconds": 0,
                **overrides,
            }
        )
    elif overrides:
        settings = settings.model_copy(update=overrides)
    return await start_stack(settings)


async def close_stack(stack: Stack) -> None:
    engine = stack.container.search
    if isinstance(engine, ElasticsearchEngine):
        import contextlib

        with contextlib.suppress(Exception):
            await engine.client.indices.delete(index=f"{engine.alias}-*", ignore_unavailable=True)
    await stop_stack(stack)


@pytest.fixture(params=["embedded", PRODUCTION])
async def search_stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    stack = await open_stack(request.param, request, tmp_path)
    yield stack
    await close_stack(stack)


@pytest.fixture
async def es_stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """Production only (Elasticsearch)."""
    for mark in ("postgres", "redis", "rabbitmq", "elasticsearch"):
        request.applymarker(getattr(pytest.mark, mark))
    stack = await open_stack("production", request, tmp_path)
    yield stack
    await close_stack(stack)


async def drift(stack: Stack, tenants: list[str]) -> ReconcileReport:
    """Differences between the database and the index for these tenants (the test database
    is shared by the whole run, the index is this test's own)."""
    engine = stack.container.search
    assert isinstance(engine, ElasticsearchEngine)
    await engine.refresh()
    return await reconcile(
        engine, stack.container.db, grace_seconds=0, tenants=tenants, repair=False
    )


async def converged(stack: Stack, tenants: list[str]) -> bool:
    report = await drift(stack, tenants)
    return report.missing == report.stale == report.extra == report.ahead == 0
