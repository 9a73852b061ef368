"""A three-node Elasticsearch cluster, one replica per shard (CAPSTAN_SEARCH_REPLICAS=1): kill -9
the node holding the index's primary shard while documents are written and searched through
the stack. Search keeps answering (never a 5xx; degraded answers from PostgreSQL at most for a
moment), answers from the index again without that node, and the index converges with the
database (the reconciler finds zero drift) both without the node and once it is back.

`pytest -s` prints the measured figures (docs/deployment.md, "Scale-out")."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from capstan.search.elasticsearch import ElasticsearchEngine
from capstan.search.reconcile import reconcile
from tests.conftest import Stack, stack_settings, start_stack, stop_stack
from tests.search.conftest import converged
from tests.servers import ElasticCluster, ElasticNode, started

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]

WRITERS = 4
WARM_UP = 100  # documents written before the load is measured
WINDOW = 200  # documents written in the measured load before the kill, and after it
MAX_DOCUMENTS = 5_000  # the load's bound
WORD = "quokka"


@pytest.fixture(scope="module")
def search_cluster() -> Iterator[ElasticCluster]:
    """One cluster for the module (three JVMs take a while to start); each test its own alias."""
    nodes = started(ElasticCluster)
    try:
        yield nodes
    finally:
        nodes.stop()


async def replica_counts(engine: ElasticsearchEngine) -> dict[str, int]:
    found = await engine.client.indices.get_settings(
        index=engine.write_alias, name="index.number_of_replicas"
    )
    return {
        name: int(index["settings"]["index"]["number_of_replicas"])
        for name, index in found.body.items()
    }


async def test_an_index_made_for_one_node_gets_a_replica_on_the_cluster(
    search_cluster: ElasticCluster,
) -> None:
    alias = f"test-{uuid.uuid4().hex[:10]}"
    single = ElasticsearchEngine(search_cluster.url, alias=alias)  # CAPSTAN_SEARCH_REPLICAS=0
    grown = ElasticsearchEngine(search_cluster.url, alias=alias, replicas=1)
    try:
        # Given the index a single-node deployment made
        await single.ensure()
        assert await replica_counts(single) == {f"{alias}-0": 0}
        # When a process starts with CAPSTAN_SEARCH_REPLICAS=1
        await grown.ensure()
        # Then the index has a replica, allocated on another node: no reindex needed
        assert await replica_counts(grown) == {f"{alias}-0": 1}
        await asyncio.to_thread(search_cluster.wait_health, 3, "green")
    finally:
        await single.client.indices.delete(index=f"{alias}-*", ignore_unavailable=True)
        await single.close()
        await grown.close()


@dataclass
class Answer:
    at: float  # monotonic time the answer came
    seconds: float
    status: int
    degraded: bool
    engines: tuple[str, ...]

    @property
    def indexed(self) -> bool:
        """Answered by Elasticsearch (merged with the database), not by PostgreSQL FTS alone."""
        return not self.degraded and "elasticsearch" in self.engines


@dataclass
class Load:
    """Writers creating documents and searchers asking for them, through the API."""

    stack: Stack
    key: str
    ids: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    stop_writes: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def write(self, writer: int) -> None:
        async with self.stack.api.client(self.key) as http:
            i = 0
            while not self.stop_writes.is_set() and len(self.ids) < MAX_DOCUMENTS:
                i += 1
                answer = await http.post(
                    "/v1/documents",
                    json={"title": f"{WORD} {writer}-{i}", "body": f"{WORD} seen by {writer}"},
                )
                assert answer.status_code == 201, answer.text
                self.ids.append(answer.json()["id"])

    async def search(self) -> None:
        async with self.stack.api.client(self.key) as http:
            while not self.stop.is_set():
                began = time.monotonic()
                answer = await http.get("/v1/search", params={"q": WORD, "limit": 5})
                body = answer.json()
                now = time.monotonic()
                self.answers.append(
                    Answer(
                        now,
                        now - began,
                        answer.status_code,
                        bool(body.get("degraded")),
                        tuple(body.get("engines", ())),
                    )
                )
                await asyncio.sleep(0.02)  # pacing, so the searchers leave the CPU to the rest

    def recovered(self, since: float) -> bool:
        """An answer from the index after `since` and after every degraded answer."""
        degraded = [a.at for a in self.answers if a.degraded]
        after = max([since, *degraded])
        return any(a.indexed and a.at > after for a in self.answers)


async def primary_node(engine: ElasticsearchEngine, cluster: ElasticCluster) -> ElasticNode:
    """The node holding the primary shard of the read index."""
    shards = await engine.client.cat.shards(index=engine.alias, format="json")
    (name,) = {s["node"] for s in shards.body if s["prirep"] == "p"}
    return next(n for n in cluster.nodes if n.name == name)


def counted(counter: Any) -> int:
    """A prometheus_client counter's value."""
    return int(counter._value.get())


async def poll(condition: Callable[[], Awaitable[bool]], what: str, timeout: float) -> float:
    """Await `condition()` until true (bounded); the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic()


async def test_a_node_loss_keeps_search_answering_and_the_index_converges(
    search_cluster: ElasticCluster, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = stack_settings("production", request, tmp_path).model_copy(
        update={
            "search_url": search_cluster.url,
            "search_index": f"test-{uuid.uuid4().hex[:10]}",
            "search_replicas": 1,
            "search_retry_seconds": 0.5,
            "search_indexer_max_attempts": 10_000,
            "search_reconcile_seconds": 0,  # the indexer alone; the reconciler checks after
            "search_reconcile_grace_seconds": 0,
        }
    )
    stack = await start_stack(settings)
    engine = stack.container.search
    assert isinstance(engine, ElasticsearchEngine)
    tasks: list[asyncio.Task[Any]] = []
    try:
        tenant = await stack.api.tenant()
        load = Load(stack, tenant.key)
        writers = [asyncio.create_task(load.write(n)) for n in range(WRITERS)]
        searchers = [asyncio.create_task(load.search()) for _ in range(2)]
        tasks = [*writers, *searchers]

        # Given writes and searches flowing, searches answered by the index on a green cluster
        async def warm() -> bool:
            return load.recovered(0) and len(load.ids) >= WARM_UP

        await poll(warm, "searches answered by the index", timeout=120)
        await asyncio.to_thread(search_cluster.wait_health, 3, "green")
        victim = await primary_node(engine, search_cluster)
        master = (await engine.client.cat.master(format="json")).body[0]["node"]
        # (the same load without a kill, to compare with: this machine's own hiccups)
        measured, written = time.monotonic(), len(load.ids)

        async def window_written() -> bool:
            return len(load.ids) >= written + WINDOW

        await poll(window_written, "the load before the kill", timeout=120)

        # When the node holding the primary shard is killed mid-load
        await asyncio.to_thread(victim.kill)
        killed = time.monotonic()
        written_at_kill = len(load.ids)

        async def cluster_of_two() -> float:
            await asyncio.to_thread(search_cluster.wait_health, 2, "yellow")
            return time.monotonic()

        noticed = asyncio.create_task(cluster_of_two())
        tasks.append(noticed)

        # Then the writes go on, and searches are answered by the index again without it
        async def recovered() -> bool:
            return load.recovered(killed) and len(load.ids) >= written_at_kill + WINDOW

        await poll(recovered, "searches answered by the index without the node", timeout=120)
        load.stop_writes.set()
        await asyncio.gather(*writers)
        writes_done = time.monotonic()
        assert len(load.ids) < MAX_DOCUMENTS, "the load ended before the kill was over"
        load.stop.set()
        await asyncio.gather(*searchers)
        assert {a.status for a in load.answers} == {200}, "a search failed"
        before = [a for a in load.answers if measured < a.at <= killed]
        after = [a for a in load.answers if a.at > killed]
        degraded = [a.at for a in after if a.degraded]
        degraded_for = (max(degraded) - killed) if degraded else 0.0
        slowest = max(a.seconds for a in after)

        # And the index converges with the database on the two nodes left
        async def in_sync() -> bool:
            return await converged(stack, [tenant.id])

        without_node = await poll(in_sync, "index == database without the node", timeout=120)
        left = await noticed
        # Nothing given up on: every event the indexer could not write was retried.
        consumed = stack.container.metrics.events_consumed
        assert counted(consumed.labels("indexer", "dead_lettered")) == 0
        retried = counted(consumed.labels("indexer", "retried"))
        async with stack.api.client(tenant.key) as http:
            body = (await http.get("/v1/search", params={"q": WORD, "limit": 1})).json()
        assert not body["degraded"] and body["total"] == len(load.ids), body

        # And again once the node is back: the reconciler finds nothing to repair
        restarted = time.monotonic()
        await asyncio.to_thread(victim.launch)
        await asyncio.to_thread(search_cluster.wait, 180)
        green = time.monotonic()
        assert await converged(stack, [tenant.id])
        report = await reconcile(engine, stack.container.db, grace_seconds=0, tenants=[tenant.id])
        assert report.documents == len(load.ids)
        assert report.drift == report.repaired == report.failed == 0, report.as_dict()

        role = "primary shard" + (", elected master" if master == victim.name else "")
        figures = [
            f"{victim.name} ({role}) killed after {written_at_kill} of {len(load.ids)} writes",
            f"cluster of two after {left - killed:.2f} s",
            f"{len(degraded)} of {len(after)} searches after the kill degraded, the last "
            f"{degraded_for:.2f} s after it (slowest search {slowest:.2f} s); before it "
            f"{sum(a.degraded for a in before)} of {len(before)} "
            f"(slowest {max(a.seconds for a in before):.2f} s)",
            f"{retried} indexer retries",
            f"index == database {without_node - killed:.2f} s after the kill, "
            f"{without_node - writes_done:.2f} s after the last write, without the node",
            f"node back and cluster green in {green - restarted:.1f} s",
            f"reconciler: drift {report.drift}, repaired {report.repaired}",
        ]
        print("\nelasticsearch node kill: " + "; ".join(figures))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stop_stack(stack)
