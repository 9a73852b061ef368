"""`capstan doctor` reads the scale-out URLs as the roles do: a Sentinel URL, a PostgreSQL host
list, several RabbitMQ and Elasticsearch nodes (one node down is named, no password shown)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from capstan.cli.doctor import run_checks
from capstan.settings import Settings
from tests.conftest import free_port, service_url
from tests.servers import SentinelGroup, started


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    servers = started(SentinelGroup)
    yield servers
    servers.stop()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
@pytest.mark.elasticsearch
async def test_doctor_checks_every_node_of_the_scale_out_urls(
    group: SentinelGroup, postgres_url: str, tmp_path: Path
) -> None:
    pg = urlsplit(postgres_url)
    broker = service_url("rabbitmq")
    dead_broker = broker.replace(f":{urlsplit(broker).port}", f":{free_port()}")
    settings = Settings(
        data_dir=tmp_path / "data",
        # A host that is down first: the list goes on to the one that answers.
        database_url=postgres_url.replace(
            pg.netloc,
            f"{pg.netloc.rpartition('@')[0]}@127.0.0.1:{free_port()},{pg.hostname}:{pg.port}",
        )
        + "?target_session_attrs=read-write",
        cache_url=group.url(),
        broker_url=f"{broker},{dead_broker}",
        search_url=f"http://127.0.0.1:{free_port()},{service_url('elasticsearch')}",
    )
    checks = {c.name: c for c in await run_checks(settings)}

    assert checks["database"].status == "ok", checks["database"]
    assert checks["cache"].status == "ok" and checks["cache"].detail.startswith("Redis 7")
    assert checks["search"].status == "ok" and "Elasticsearch 8" in checks["search"].detail
    # One broker node down: a warning naming it (the roles use the other)
    assert checks["broker"].status == "warn", checks["broker"]
    assert checks["broker"].detail.startswith("RabbitMQ ")
    assert f":{urlsplit(dead_broker).port}" in checks["broker"].detail.partition("down:")[2]
    shown = json.dumps([asdict(c) for c in checks.values()])
    assert ":capstan@" not in shown and "%3A" not in shown  # no password, even URL-encoded
