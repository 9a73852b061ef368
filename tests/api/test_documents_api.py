"""The REST document flow, run in both modes (embedded and PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from capstan.db.schema import OutboxEvent
from tests.conftest import Api


async def test_create_then_read_twice_misses_then_hits(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        created = await http.post(
            "/v1/documents",
            json={"collection": "notes", "title": "Hello", "body": "World", "tags": ["a", "b"]},
        )
        assert created.status_code == 201
        doc = created.json()
        assert doc["version"] == 1 and created.headers["etag"] == '"1"'
        assert created.headers["location"] == f"/v1/documents/{doc['id']}"

        first = await http.get(f"/v1/documents/{doc['id']}")
        second = await http.get(f"/v1/documents/{doc['id']}")
    assert (first.status_code, first.headers["x-cache"]) == (200, "miss")
    assert (second.status_code, second.headers["x-cache"]) == (200, "hit")
    assert first.json() == second.json() == doc
    assert second.headers["etag"] == '"1"'


async def test_no_cache_reads_the_database(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": "x"})).json()
        await http.get(f"/v1/documents/{doc['id']}")
        bypass = await http.get(f"/v1/documents/{doc['id']}", headers={"Cache-Control": "no-cache"})
    assert bypass.headers["x-cache"] == "bypass" and bypass.json() == doc


async def test_update_with_if_match_then_stale_if_match_is_412(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"title": "v1", "body": "b"})).json()
        await http.get(f"/v1/documents/{doc['id']}")  # cache it
        updated = await http.patch(
            f"/v1/documents/{doc['id']}", json={"title": "v2"}, headers={"If-Match": '"1"'}
        )
        assert updated.status_code == 200
        assert updated.json()["version"] == 2 and updated.headers["etag"] == '"2"'

        stale = await http.patch(
            f"/v1/documents/{doc['id']}", json={"title": "v3"}, headers={"If-Match": '"1"'}
        )
        assert stale.status_code == 412
        assert stale.headers["content-type"] == "application/problem+json"
        assert stale.json()["current_version"] == 2

        read = await http.get(f"/v1/documents/{doc['id']}")
    assert read.json()["title"] == "v2" and read.json()["version"] == 2


async def test_patch_changes_only_the_given_fields(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc = (
            await http.post("/v1/documents", json={"title": "t", "body": "b", "metadata": {"k": 1}})
        ).json()
        updated = (
            await http.patch(f"/v1/documents/{doc['id']}", json={"tags": ["x", "x", "y"]})
        ).json()
    assert updated["tags"] == ["x", "y"]
    assert (updated["title"], updated["body"], updated["metadata"]) == ("t", "b", {"k": 1})


async def test_if_none_match_with_the_current_etag_is_304_without_a_body(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": "b"})).json()
        url = f"/v1/documents/{doc['id']}"
        fresh = await http.get(url, headers={"If-None-Match": 'W/"1"'})
        listed = await http.get(url, headers={"If-None-Match": '"7", "1"'})
        await http.patch(url, json={"body": "b2"})
        moved_on = await http.get(url, headers={"If-None-Match": '"1"'})
    assert (fresh.status_code, fresh.content, fresh.headers["etag"]) == (304, b"", '"1"')
    assert listed.status_code == 304
    assert moved_on.status_code == 200 and moved_on.json()["body"] == "b2"


async def _events_about(api: Api, doc_id: str) -> int:
    async with api.container.db() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.subject == f"documents/{doc_id}")
        )
    return int(count or 0)


async def test_an_empty_or_unchanged_patch_makes_no_version_and_no_event(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"title": "t", "body": "b"})).json()
        url = f"/v1/documents/{doc['id']}"
        empty = await http.patch(url, json={})
        same = await http.patch(url, json={"title": "t"}, headers={"If-Match": '"1"'})
        real = await http.patch(url, json={"title": "t2"})
    assert (empty.status_code, empty.json()["version"], empty.headers["etag"]) == (200, 1, '"1"')
    assert same.json()["version"] == 1
    assert real.json()["version"] == 2
    assert await _events_about(api, doc["id"]) == 2  # created, then one real update


async def test_delete_then_read_is_404_even_after_it_was_cached(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": "gone soon"})).json()
        await http.get(f"/v1/documents/{doc['id']}")
        deleted = await http.delete(f"/v1/documents/{doc['id']}")
        assert deleted.status_code == 204
        after = await http.get(f"/v1/documents/{doc['id']}")
        again = await http.delete(f"/v1/documents/{doc['id']}")
    assert after.status_code == 404 and after.headers["content-type"] == "application/problem+json"
    assert again.status_code == 404


async def test_list_pages_through_everything_once_with_filters(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        ids = []
        for i in range(7):
            body = {
                "collection": "even" if i % 2 == 0 else "odd",
                "body": f"doc {i}",
                "tags": ["three"] if i % 3 == 0 else [],
            }
            ids.append((await http.post("/v1/documents", json=body)).json()["id"])

        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get("/v1/documents", params=params)).json()
            seen += [d["id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        even = (await http.get("/v1/documents", params={"collection": "even"})).json()
        tagged = (await http.get("/v1/documents", params={"tag": "three"})).json()
        both = (
            await http.get("/v1/documents", params={"tag": "three", "collection": "odd"})
        ).json()
    assert seen == ids
    assert [d["id"] for d in even["items"]] == ids[0::2]
    assert [d["id"] for d in tagged["items"]] == [ids[0], ids[3], ids[6]]
    assert [d["id"] for d in both["items"]] == [ids[3]]


async def test_concurrent_misses_on_one_key_read_the_database_once(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": "popular"})).json()
        before = _sample(api, "capstan_cache_loads_total")
        answers = await asyncio.gather(*(http.get(f"/v1/documents/{doc['id']}") for _ in range(20)))
    assert all(a.status_code == 200 for a in answers)
    assert {a.headers["x-cache"] for a in answers} <= {"miss", "hit"}
    assert {a.json()["version"] for a in answers} == {1}
    # Twenty concurrent reads of a cold key: one database read (single flight).
    assert _sample(api, "capstan_cache_loads_total") - before == 1


def _sample(api: Api, name: str) -> float:
    value = api.container.metrics.registry.get_sample_value(name, {"cache": "documents"})
    return value or 0.0


@pytest.mark.postgres
@pytest.mark.redis
async def test_the_one_statement_create_writes_what_the_orm_path_writes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On PostgreSQL a create is one statement on asyncpg (documents/statements.py); the row,
    its analyzed search terms and the event envelope are those the ORM path writes."""
    from capstan.db.schema import Document
    from capstan.documents.schemas import DocumentCreate
    from capstan.documents.service import DocumentStore
    from tests.conftest import production_settings, start_api

    settings = production_settings(
        request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url"), tmp_path
    )
    api = await start_api(settings)
    try:
        c = api.container
        assert c.fast is not None
        tenant = await api.tenant()
        body = DocumentCreate(
            collection="notes",
            title="Running parsers",
            body="Serialized files, formatted output: ünïcode too.",
            tags=["b", "a", "b"],
            metadata={"nested": {"k": [1, 2.5, None, True]}},
        )
        orm = DocumentStore(c.db, c.dialect, c.documents_cache, settings.source)
        made = [
            await c.documents.create_one(tenant.id, body),
            await orm.create_one(tenant.id, body),
        ]

        async with c.db() as session:
            rows = [await session.get(Document, d.id) for d in made]
            envelopes = [
                (
                    await session.execute(
                        select(
                            OutboxEvent.routing_key, OutboxEvent.subject, OutboxEvent.envelope
                        ).where(OutboxEvent.subject == f"documents/{d.id}")
                    )
                ).one()
                for d in made
            ]
    finally:
        await c.close()

    def columns(doc: Document | None) -> dict[str, object]:
        assert doc is not None
        skip = {"id", "created_at", "updated_at"}
        return {k: v for k, v in vars(doc).items() if not k.startswith("_") and k not in skip}

    fast_row, orm_row = (columns(r) for r in rows)
    assert fast_row == orm_row and fast_row["terms_title"] and fast_row["tags"] == ["b", "a"]

    def shape(made_id: str, found: Any) -> tuple[Any, ...]:
        routing, subject, env = found
        env = dict(env)
        data = dict(env.pop("data"))
        assert data.pop("id") == made_id and subject == f"documents/{made_id}"
        assert env.pop("subject") == subject
        env.pop("id"), env.pop("time")
        return routing, env, data

    assert shape(made[0].id, envelopes[0]) == shape(made[1].id, envelopes[1])
