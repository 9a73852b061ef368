"""An unreachable PostgreSQL: clear 503s with Retry-After, and /readyz says why."""

from __future__ import annotations

from pathlib import Path

from capstan.settings import Settings
from tests.conftest import UNLIMITED, free_port, start_api_unmigrated


async def test_requests_get_503_problem_and_readyz_is_unready(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"postgresql://capstan:capstan@127.0.0.1:{free_port()}/capstan",
        **UNLIMITED,  # type: ignore[arg-type]
    )
    api = await start_api_unmigrated(settings)
    try:
        async with api.client("cst_0123456789abcdef_" + "x" * 43) as http:
            answer = await http.get("/v1/documents")
            ready = await http.get("/readyz")
            alive = await http.get("/healthz")
        assert answer.status_code == 503
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"] == "1"
        assert ready.status_code == 503
        assert ready.json()["status"] == "unready"
        assert ready.json()["checks"]["database"]["status"] == "down"
        assert alive.status_code == 200
    finally:
        await api.container.close()


async def test_the_fast_paths_unwrapped_asyncpg_errors_are_problems_too() -> None:
    """The hot paths raise asyncpg's own errors: an outage is a 503 + Retry-After (it was a
    500 while a primary died, tests/scale/test_promotion.py), bad data a 422, and neither
    escapes the handlers."""
    import asyncpg
    import httpx
    from fastapi import FastAPI

    from capstan.api import problems

    app = FastAPI()
    problems.install(app)
    raised: dict[str, Exception] = {
        "closed": asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        "state": asyncpg.InternalClientError("cannot switch to state 15"),
        "range": asyncpg.exceptions.NumericValueOutOfRangeError("out of range"),
    }

    @app.get("/{name}")
    async def fail(name: str) -> None:
        raise raised[name]

    # An exception no handler takes would be raised here by the transport.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        for name in ("closed", "state"):
            answer = await client.get(f"/{name}")
            assert (answer.status_code, answer.headers.get("retry-after")) == (503, "1"), name
            assert answer.headers["content-type"] == "application/problem+json"
        assert (await client.get("/range")).status_code == 422
