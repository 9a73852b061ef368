"""CAPSTAN_DATABASE_READ_URL against a real streaming replica: list and search read from it,
never return something older than an acknowledged write, and fall back to the primary."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from capstan.settings import Settings
from tests.conftest import UNLIMITED, Api, start_api
from tests.servers import PostgresPair, started

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pair() -> Iterator[PostgresPair]:
    servers = started(PostgresPair)
    yield servers
    servers.stop()


def routed(api: Api, target: str) -> float:
    return api.container.metrics.db_routed_reads.labels(target)._value.get()


async def replica_api(pair: PostgresPair, tmp_path: Path, max_wait: float) -> Api:
    settings = Settings(
        data_dir=tmp_path,
        database_url=pair.primary.url,
        database_read_url=pair.replica.url,
        database_read_max_wait_seconds=max_wait,
        database_read_retry_seconds=3600,  # only /readyz's probe brings a lost replica back
        **UNLIMITED,  # type: ignore[arg-type]
    )
    return await start_api(settings)


@pytest.fixture
async def api(pair: PostgresPair, tmp_path: Path) -> AsyncIterator[Api]:
    # A long wait: a current replica is always used, whatever the machine's load.
    instance = await replica_api(pair, tmp_path, max_wait=30.0)
    yield instance
    await instance.container.close()


async def test_list_and_search_read_from_a_current_replica(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        answer = await http.post("/v1/documents", json={"title": "on the replica", "body": "b"})
        assert answer.status_code == 201, answer.text
        created = answer.json()
        before = routed(api, "replica")
        listed = await http.get("/v1/documents")
        found = await http.get("/v1/search", params={"q": "replica"})
    assert [d["id"] for d in listed.json()["items"]] == [created["id"]]
    assert [h["id"] for h in found.json()["hits"]] == [created["id"]]
    assert routed(api, "replica") >= before + 2


async def test_a_lagging_replica_never_hides_an_acknowledged_write(
    pair: PostgresPair, tmp_path: Path
) -> None:
    # Given a replica that has stopped replaying (as a slow one would)
    api = await replica_api(pair, tmp_path, max_wait=0.05)
    pair.replica.sql("SELECT pg_wal_replay_pause()")
    try:
        tenant = await api.tenant()
        async with api.client(tenant.key) as http:
            # When a client writes, then lists and searches
            doc = (
                await http.post("/v1/documents", json={"title": "first draft", "body": "b"})
            ).json()
            patched = await http.patch(f"/v1/documents/{doc['id']}", json={"title": "final"})
            assert patched.status_code == 200
            listed = (await http.get("/v1/documents")).json()["items"]
            found = (await http.get("/v1/search", params={"q": "final"})).json()["hits"]
        # Then it sees its write, at the version it was told about
        assert [(d["id"], d["title"], d["version"]) for d in listed] == [(doc["id"], "final", 2)]
        assert [h["id"] for h in found] == [doc["id"]]
        assert pair.replica.sql("SELECT count(*) FROM documents WHERE title = 'final'") == "0"
        assert routed(api, "lagging") >= 2
    finally:
        pair.replica.sql("SELECT pg_wal_replay_resume()")
        await api.container.close()


async def test_reads_fall_back_to_the_primary_while_the_replica_is_down(
    pair: PostgresPair, api: Api
) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"title": "kept", "body": "b"})).json()
        pair.replica.kill()
        try:
            listed = await http.get("/v1/documents")
            ready = await http.get("/readyz")
            assert listed.status_code == 200
            assert [d["id"] for d in listed.json()["items"]] == [doc["id"]]
            assert routed(api, "primary") >= 1
            assert ready.status_code == 200
            assert ready.json()["status"] == "degraded"
            assert ready.json()["checks"]["replica"]["status"] == "down"
        finally:
            pair.replica.start()
        # Once the probe reaches it again, the replica serves reads again.
        assert (await http.get("/readyz")).json()["checks"]["replica"]["status"] == "up"
        before = routed(api, "replica")
        assert (await http.get("/v1/documents")).status_code == 200
        assert routed(api, "replica") == before + 1


def test_a_read_url_needs_postgresql(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="database_read_url"):
        Settings(data_dir=tmp_path, database_read_url="postgresql://127.0.0.1:1/x")
