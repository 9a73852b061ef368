"""/healthz (the process is alive), /readyz (its dependencies), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from capstan.api.deps import ContainerDep

if TYPE_CHECKING:
    from capstan.container import Container

router = APIRouter(tags=["operations"])

PROBE_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: answers while the process can serve requests."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(c: ContainerDep) -> JSONResponse:
    """Each dependency's state; 503 when a required one (the database) is down."""
    checks = await probe_all(c)
    required_down = any(v["required"] and v["status"] != "up" for v in checks.values())
    any_down = any(v["status"] != "up" for v in checks.values())
    overall = "unready" if required_down else ("degraded" if any_down else "ready")
    return JSONResponse(
        {"status": overall, "checks": checks}, status_code=503 if required_down else 200
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(c: ContainerDep) -> Response:
    return Response(generate_latest(c.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def probe_all(c: Container) -> dict[str, dict[str, Any]]:
    async def database() -> None:
        async with c.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    s = c.settings
    probes: dict[str, tuple[Callable[[], Awaitable[None]], bool, str]] = {
        "database": (database, True, c.dialect.name),
        "cache": (c.cache.ping, False, "memory" if s.cache_url.startswith("memory") else "redis"),
        "broker": (
            c.broker.ping,
            False,
            "memory" if s.broker_in_process else "rabbitmq",
        ),
        "search": (c.search.ping, False, c.search.name),
    }
    if c.reads.replica_configured:
        # Not required: list and search reads fall back to the primary without it.
        probes["replica"] = (c.reads.ping, False, "postgresql")
    names = list(probes)
    results = await asyncio.gather(*(_probe(*probes[n]) for n in names))
    for name, result in zip(names, results, strict=True):
        c.metrics.dependency_up.labels(name).set(1 if result["status"] == "up" else 0)
    return dict(zip(names, results, strict=True))


async def _probe(
    check: Callable[[], Awaitable[None]], required: bool, backend: str
) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"backend": backend, "required": required}
    try:
        await asyncio.wait_for(check(), PROBE_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure means "down"; the reason is reported
        result.update(status="down", error=str(exc) or type(exc).__name__)
    else:
        result["status"] = "up"
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result
