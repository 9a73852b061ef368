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
