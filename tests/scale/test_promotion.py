"""Losing the PostgreSQL primary: 503 + Retry-After while no primary exists, `capstan db
promote` on the replica, and the same API (no restart) answering again with every write it
acknowledged still there."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from capstan.db.engine import create_engine
from capstan.settings import Settings
from tests.conftest import UNLIMITED, Api, start_api
from tests.servers import PostgresPair, started

pytestmark = pytest.mark.postgres


@pytest.fixture
def pair() -> Iterator[PostgresPair]:
    servers = started(lambda: PostgresPair(synchronous=True))
    yield servers
    servers.stop()


class Writers:
    """Clients creating documents and tasks until stopped; what was acknowledged, and how
    every refusal looked."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.documents: set[str] = set()
        self.tasks: set[str] = set()
        self.refusals: list[httpx.Response] = []
        self.stopping = False

    async def run(self, index: int) -> None:
        n = 0
        while not self.stopping:
            n += 1
            if n % 2:
                answer = await self.http.post("/v1/documents", json={"body": f"w{index}-{n}"})
                if answer.status_code == 201:
                    self.documents.add(answer.json()["id"])
                    continue
            else:
                body = {"type": "test.noop", "input": {}}
                answer = await self.http.post("/v1/tasks", json=body)
                if answer.status_code == 202:
                    self.tasks.add(answer.json()["id"])
                    continue
            self.refusals.append(answer)
            await asyncio.sleep(0.05)

    @property
    def acknowledged(self) -> int:
        return len(self.documents) + len(self.tasks)


async def until(condition: object, what: str, timeout: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def capstan_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capstan.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "CAPSTAN_LOG_JSON": "false"},
        timeout=120,
    )


async def test_promotion_after_primary_loss_keeps_every_acknowledged_write(
    pair: PostgresPair, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=pair.url,
        tasks_enable_test_handlers=True,
        **UNLIMITED,  # type: ignore[arg-type]
    )
    api: Api = await start_api(settings)
    try:
        tenant = await api.tenant()
        async with api.client(tenant.key) as http:
            writers = Writers(http)
            running = [asyncio.create_task(writers.run(i)) for i in range(4)]
            # Given writes being acknowledged under load
            await until(lambda: writers.acknowledged >= 40, "40 acknowledged writes")

            # When the primary dies, the API refuses with 503 + Retry-After, reads included
            pair.primary.kill()
            refused_before = len(writers.refusals)
            await until(lambda: len(writers.refusals) > refused_before + 4, "refusals")
            listed = await http.get("/v1/documents")
            assert listed.status_code == 503 and listed.headers["retry-after"] == "1"

            # And `capstan db promote` makes the replica the primary
            done = await asyncio.to_thread(capstan_cli, "db", "promote", pair.replica.url)
            assert done.returncode == 0, done.stderr
            assert "promoted" in done.stderr

            # Then the same API instance takes writes again, with no restart
            after = writers.acknowledged
            await until(lambda: writers.acknowledged > after + 10, "writes after promotion")
            writers.stopping = True
            await asyncio.gather(*running)
        assert writers.refusals
        for refusal in writers.refusals:
            assert refusal.status_code == 503, refusal.text
            assert refusal.headers["retry-after"] == "1"
            assert refusal.headers["content-type"] == "application/problem+json"

        # And every acknowledged document and task is on the new primary, with its event
        engine = create_engine(pair.replica.url, pool_size=1)
        try:
            async with engine.connect() as conn:
                docs = set((await conn.execute(text("SELECT id FROM documents"))).scalars())
                tasks = set((await conn.execute(text("SELECT id FROM tasks"))).scalars())
                subjects = set((await conn.execute(text("SELECT subject FROM outbox"))).scalars())
        finally:
            await engine.dispose()
        assert writers.documents <= docs
        assert writers.tasks <= tasks
        assert {f"documents/{d}" for d in writers.documents} <= subjects
    finally:
        await api.container.close()


def test_promote_refuses_a_host_list() -> None:
    done = capstan_cli("db", "promote", "postgresql://u:p@h1:5432,h2:5432/capstan")
    assert done.returncode != 0
    assert "one replica" in done.stderr


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_the_gateway_follows_the_promotion_through_a_host_list(
    pair: PostgresPair, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from tests.conftest import stack_settings, start_stack, stop_stack
    from tests.gateway.conftest import start_gateway, stop_gateway

    settings = stack_settings("production", request, tmp_path).model_copy(
        update={"database_url": pair.url}
    )
    stack = await start_stack(settings, ["cache"], worker=False)
    gateway = await start_gateway(stack, tmp_path / "gateway.log")
    try:
        tenant = await stack.api.tenant()
        headers = {"Authorization": f"Bearer {tenant.key}"}
        async with stack.api.client(tenant.key) as api, httpx.AsyncClient(headers=headers) as gw:
            before = (await api.post("/v1/documents", json={"body": "before"})).json()
            assert (await gw.get(f"{gateway.url}/v1/documents/{before['id']}")).status_code == 200
            # When the primary dies and the replica is promoted
            pair.primary.kill()
            done = await asyncio.to_thread(capstan_cli, "db", "promote", pair.replica.url)
            assert done.returncode == 0, done.stderr

            # Then a document written after the promotion is read by the gateway from the
            # promoted server (a cache miss: only the database has it), with no restart
            for _ in range(100):  # the API's pool meets the dead primary first: 503s
                after = await api.post("/v1/documents", json={"body": "after"})
                if after.status_code != 503:
                    break
                await asyncio.sleep(0.1)
            assert after.status_code == 201, after.text
            url = f"{gateway.url}/v1/documents/{after.json()['id']}"
            answers: list[int] = []

            def served() -> bool:
                return bool(answers) and answers[-1] == 200

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while not served():
                assert loop.time() < deadline, f"the gateway never read it: {answers}"
                answers.append((await gw.get(url)).status_code)
                await asyncio.sleep(0.1)
            assert set(answers) <= {200, 503}, answers
    finally:
        await stop_gateway(gateway)
        await stop_stack(stack)


async def test_backups_follow_the_host_list_to_the_primary(
    pair: PostgresPair, tmp_path: Path
) -> None:
    from capstan.backups import postgres
    from capstan.backups.progress import Silent
    from capstan.db.migrate import upgrade

    await upgrade(pair.url)
    assert await postgres.primary_of(pair.url) == pair.primary.url
    pair.primary.kill()
    done = await asyncio.to_thread(capstan_cli, "db", "promote", pair.replica.url)
    assert done.returncode == 0, done.stderr
    # pg_dump takes one server: the one that accepts writes now
    assert await postgres.primary_of(pair.url) == pair.replica.url
    source = await postgres.dump(pair.url, tmp_path / "capstan.dump", Silent())
    assert (tmp_path / "capstan.dump").stat().st_size > 0
    assert "documents" in str(source)
