"""The API configured with every real backend reports each of them in /readyz."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import production_settings, service_url, start_api

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.rabbitmq,
    pytest.mark.elasticsearch,
]


async def test_readyz_reports_all_four_real_backends_up(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = production_settings(postgres_url, redis_url, tmp_path).model_copy(
        update={
            "broker_url": service_url("rabbitmq"),
            "search_url": service_url("elasticsearch"),
        }
    )
    api = await start_api(settings)
    try:
        async with api.client() as http:
            for _ in range(100):  # the broker connects in the background
                body = (await http.get("/readyz")).json()
                if body["status"] == "ready":
                    break
                await asyncio.sleep(0.1)
        assert body["status"] == "ready", body
        backends = {name: check["backend"] for name, check in body["checks"].items()}
        assert backends == {
            "database": "postgresql",
            "cache": "redis",
            "broker": "rabbitmq",
            "search": "elasticsearch",
        }
        async with api.client() as http:
            text = (await http.get("/metrics")).text
        assert 'capstan_dependency_up{dependency="broker"} 1.0' in text
    finally:
        await api.container.close()
