"""The index converges to the database: random concurrent writes, events replayed and
shuffled, Elasticsearch stopped and started, a reindex while writes continue."""

from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from capstan.db.schema import Document, OutboxEvent
from capstan.db.unit import unit_of_work
from capstan.documents.schemas import DocumentCreate, DocumentUpdate
from capstan.errors import NotFound
from capstan.events.envelope import encode, parse_event
from capstan.search.elasticsearch import ElasticsearchEngine
from capstan.search.reconcile import reconcile
from capstan.search.reindex import reindex
from capstan.subscribers.indexer import IndexerSubscriber
from tests.conftest import Stack
from tests.search.conftest import close_stack, converged, drift, open_stack

SERVICES = str(Path(__file__).resolve().parents[2] / "scripts" / "services")


async def services(action: str) -> None:
    """`scripts/services <action> elasticsearch`, off the event loop."""
    await asyncio.to_thread(
        subprocess.run, [SERVICES, action, "elasticsearch"], check=True, capture_output=True
    )


WORDS = ["amber", "birch", "cobalt", "delta", "ember", "fjord", "garnet", "harbor"]


async def random_writes(
    stack: Stack, tenants: list[str], ops: int, writers: int, seed: int
) -> set[str]:
    """`ops` random creates/updates/deletes from `writers` concurrent writers; deleted ids."""
    store = stack.container.documents
    live: dict[str, list[str]] = {t: [] for t in tenants}
    deleted: set[str] = set()
    per_writer = ops // writers

    async def writer(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        for _ in range(per_writer):
            tenant = rng.choice(tenants)
            pool = live[tenant]
            roll = rng.random()
            try:
                if roll < 0.45 or len(pool) < 5:
                    doc = await store.create_one(
                        tenant,
                        DocumentCreate(
                            title=rng.choice(WORDS),
                            body=" ".join(rng.sample(WORDS, 3)),
                            tags=[rng.choice(WORDS)],
                        ),
                    )
                    pool.append(doc.id)
                elif roll < 0.8:
                    async with unit_of_work(stack.container.db) as uow:
                        await store.update(
                            uow,
                            tenant,
                            rng.choice(pool),
                            DocumentUpdate(body=" ".join(rng.sample(WORDS, 2))),
                        )
                else:
                    victim = pool.pop(rng.randrange(len(pool)))
                    async with unit_of_work(stack.container.db) as uow:
                        await store.delete(uow, tenant, victim)
                    deleted.add(victim)
            except NotFound:
                pass  # another writer deleted it first

    await asyncio.gather(*(writer(n) for n in range(writers)))
    return deleted


async def test_2000_random_ops_with_shuffled_replays_converge(
    es_stack: Stack, tmp_path: Path
) -> None:
    c = es_stack.container
    tenants = [(await es_stack.api.tenant()).id for _ in range(3)]
    deleted = await random_writes(es_stack, tenants, 2000, 8, seed=5)
    assert deleted

    # Every document event again, shuffled, straight into an indexer (no idempotency record,
    # so only versioning stands between a replay and an old version).
    async with c.db() as session:
        envelopes = list(
            (
                await session.scalars(
                    select(OutboxEvent.envelope).where(OutboxEvent.routing_key.like("document.%"))
                )
            ).all()
        )
    # Nearly every op made an event: a PATCH that changes nothing makes none (issue 17).
    assert len(envelopes) >= 1900
    events = [parse_event(encode(e)) for e in envelopes]
    random.Random(7).shuffle(events)
    replayer = IndexerSubscriber(c.metrics, c.search, c.db, batch_size=200, linger_ms=2)
    async with c.db() as session:
        for start in range(0, len(events), 100):
            await asyncio.gather(
                *(replayer.handle(e, session) for e in events[start : start + 100])
            )

    await es_stack.until(lambda: converged(es_stack, tenants), timeout=90, what="index == database")
    report = await drift(es_stack, tenants)
    assert report.drift == 0 and report.documents > 0
    # The reconciler finds nothing to repair either.
    assert isinstance(c.search, ElasticsearchEngine)
    repaired = await reconcile(c.search, c.db, c.metrics, grace_seconds=0, tenants=tenants)
    assert repaired.drift == 0 and repaired.repaired == 0
    assert c.metrics.search_drift._value.get() == 0  # type: ignore[attr-defined]
    # A deleted document is never returned, by any word it contained.
    async with c.db() as session:
        assert not (
            await session.scalars(select(Document.id).where(Document.id.in_(deleted)))
        ).all()
    for tenant in tenants:
        from capstan.search.port import SearchQuery

        for word in WORDS:
            result = await c.search.query(
                SearchQuery(
                    tenant_id=tenant, text=word, limit=100, with_facets=False, with_highlights=False
                )
            )
            assert not {h.id for h in result.hits} & deleted


async def test_the_reconciler_repairs_what_the_indexer_missed(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    stack = await open_stack(
        "production",
        request,
        tmp_path,
        search_reconcile_seconds=0.5,
        subscribers=["cache", "audit"],
    )  # no indexer at all
    try:
        tenant = await stack.api.tenant()
        async with stack.api.client(tenant.key) as client:
            for i in range(5):
                r = await client.post("/v1/documents", json={"title": f"t{i}", "body": "quokka"})
                assert r.status_code == 201
        # Background without the indexer has no reconciler either: run one by hand.
        c = stack.container
        assert isinstance(c.search, ElasticsearchEngine)
        report = await reconcile(c.search, c.db, c.metrics, grace_seconds=0, tenants=[tenant.id])
        assert report.missing == 5 and report.repaired == 5
        assert c.metrics.search_drift._value.get() == 5  # type: ignore[attr-defined]
        await c.search.refresh()
        assert await converged(stack, [tenant.id])
    finally:
        await close_stack(stack)


async def test_reindex_while_writes_continue(es_stack: Stack) -> None:
    c = es_stack.container
    assert isinstance(c.search, ElasticsearchEngine)
    tenants = [(await es_stack.api.tenant()).id for _ in range(2)]
    await random_writes(es_stack, tenants, 400, 4, seed=1)
    old = await c.search.read_index()
    progress: list[tuple[int, int]] = []
    writes = asyncio.create_task(random_writes(es_stack, tenants, 600, 4, seed=2))
    report = await reindex(c.search, c.db, lambda done, total: progress.append((done, total)))
    await writes
    assert report.old_index == old and report.new_index != old
    assert await c.search.read_index() == report.new_index
    assert await c.search.write_targets(fresh=True) == [report.new_index]
    assert progress and progress[-1][0] == report.documents
    # Nothing missing or stale once the indexer has caught up (no reconciler running).
    await es_stack.until(lambda: converged(es_stack, tenants), timeout=60, what="index == database")


@pytest.mark.services
async def test_elasticsearch_down_degrades_then_recovers(es_stack: Stack) -> None:
    tenant = await es_stack.api.tenant()
    async with es_stack.api.client(tenant.key) as client:
        r = await client.post("/v1/documents", json={"title": "Narwhal", "body": "tusk"})
        first = r.json()["id"]

        async def indexed(q: str, want: str) -> bool:
            res = (await client.get("/v1/search", params={"q": q})).json()
            return not res["degraded"] and want in {h["id"] for h in res["hits"]}

        await es_stack.until(lambda: indexed("narwhal", first), timeout=30, what="indexed")
        await services("down")
        try:
            res = await client.get("/v1/search", params={"q": "narwhal"})
            assert res.status_code == 200
            body = res.json()
            assert body["degraded"] is True and body["engines"] == ["postgres-fts"]
            assert [h["id"] for h in body["hits"]] == [first]
            assert any("<em>" in f for f in body["hits"][0]["highlights"])
            # Written during the outage: found at once by the fallback.
            r = await client.post("/v1/documents", json={"title": "Narwhal two", "body": "tusk"})
            second = r.json()["id"]
            body = (await client.get("/v1/search", params={"q": "tusk"})).json()
            assert body["degraded"] and {h["id"] for h in body["hits"]} == {first, second}
            ready = (await client.get("/readyz")).json()
            assert ready["status"] == "degraded"
            await asyncio.sleep(1)
        finally:
            await services("up")
        # Back: the indexer's retries deliver the outage's write, without a restart.
        await es_stack.until(lambda: indexed("tusk", second), timeout=120, what="catch-up")
        body = (await client.get("/v1/search", params={"q": "tusk"})).json()
        assert body["engines"] == ["elasticsearch", "postgresql"]
        assert {h["id"] for h in body["hits"]} == {first, second}
