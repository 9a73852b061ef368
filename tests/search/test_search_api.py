"""GET /v1/search end to end: embedded (SQLite FTS5) and production (Elasticsearch merged with
PostgreSQL), through the event flow."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx

from tests.conftest import Stack

WORDS = {
    "apollo": ("Apollo moon landing", "astronauts walked on the moon", "space", ["nasa"]),
    "cheese": ("Moon cheese", "the moon is made of cheese", "folklore", ["humor"]),
    "garden": ("Gardening", "tomatoes and water", "garden", ["howto"]),
}


async def create(
    client: httpx.AsyncClient, title: str, body: str, coll: str, tags: list[str], **extra: Any
) -> dict[str, Any]:
    r = await client.post(
        "/v1/documents",
        json={"title": title, "body": body, "collection": coll, "tags": tags, **extra},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def search(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/search", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def found(stack: Stack, client: httpx.AsyncClient, q: str, n: int) -> dict[str, Any]:
    """Wait until `q` finds `n` documents (the indexer is asynchronous in production)."""
    result: dict[str, Any] = {}

    async def ok() -> bool:
        nonlocal result
        result = await search(client, q=q)
        return len(result["hits"]) == n

    await stack.until(ok, timeout=30, what=f"{n} hits for {q!r}")
    return result


async def test_search_finds_ranks_highlights_and_facets(search_stack: Stack) -> None:
    api = search_stack.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        started = time.monotonic()
        docs = {k: await create(client, *v) for k, v in WORDS.items()}
        result = await found(search_stack, client, "moon", 2)
        if search_stack.container.settings.embedded:
            assert time.monotonic() - started < 1.0  # acceptance: found within a second
            assert result["engines"] == ["sqlite-fts5"]
        else:
            assert result["engines"] == ["elasticsearch", "postgresql"]
        assert result["degraded"] is False
        assert {h["id"] for h in result["hits"]} == {docs["apollo"]["id"], docs["cheese"]["id"]}
        assert result["total"] == 2
        assert result["facets"]["collections"] == {"space": 1, "folklore": 1}
        assert result["facets"]["tags"] == {"nasa": 1, "humor": 1}
        assert isinstance(result["took_ms"], float | int)
        hit = next(h for h in result["hits"] if h["id"] == docs["cheese"]["id"])
        assert hit["title"] == "Moon cheese" and hit["version"] == 1 and hit["score"] > 0
        assert any("<em>" in frag for frag in hit["highlights"])

        narrowed = await search(client, q="moon", collection="folklore")
        assert [h["id"] for h in narrowed["hits"]] == [docs["cheese"]["id"]]
        structured = await search(client, tag="howto")
        assert [h["id"] for h in structured["hits"]] == [docs["garden"]["id"]]
        assert structured["engines"] == (
            ["sqlite"] if search_stack.container.settings.embedded else ["postgresql"]
        )
        assert structured["hits"][0]["score"] is None


async def test_cursor_pagination_and_edits(search_stack: Stack) -> None:
    api = search_stack.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        ids = [
            (await create(client, f"Note {i}", "zebra stripes", "notes", []))["id"]
            for i in range(7)
        ]
        await found(search_stack, client, "zebra", 7)
        for params in ({"q": "zebra"}, {"collection": "notes", "sort": "created"}):
            seen: list[str] = []
            cursor = None
            for _ in range(10):
                page = await search(
                    client, limit=3, **params, **({"cursor": cursor} if cursor else {})
                )
                seen += [h["id"] for h in page["hits"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert sorted(seen) == sorted(ids), params
        # An edit is visible; a delete is never returned, even before the indexer has run.
        r = await client.patch(f"/v1/documents/{ids[0]}", json={"body": "okapi"})
        assert r.status_code == 200
        await found(search_stack, client, "okapi", 1)
        assert (await client.delete(f"/v1/documents/{ids[1]}")).status_code == 204
        after = await search(client, q="zebra", limit=50)
        assert ids[1] not in {h["id"] for h in after["hits"]}
        assert ids[0] not in {h["id"] for h in after["hits"]}


async def test_writes_between_pages_neither_skip_nor_repeat_hits(search_stack: Stack) -> None:
    """Every write changes the idfs, so every score; the cursor keeps the first page's."""
    api = search_stack.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        ids = {(await create(client, f"Ibis {i}", "ibis", "birds", []))["id"] for i in range(5)}
        await found(search_stack, client, "ibis", 5)
        page = await search(client, q="ibis", limit=2)
        seen = [h["id"] for h in page["hits"]]
        late = {(await create(client, f"Ibis {i}", "ibis", "birds", []))["id"] for i in range(5, 9)}
        await found(search_stack, client, "ibis", 9)
        while page["next_cursor"]:
            page = await search(client, q="ibis", limit=2, cursor=page["next_cursor"])
            seen += [h["id"] for h in page["hits"]]
        assert len(seen) == len(set(seen)), seen
        assert ids <= set(seen) <= ids | late


async def test_tenants_never_see_each_other(search_stack: Stack) -> None:
    api = search_stack.api
    a, b = await api.tenant(), await api.tenant()
    async with api.client(a.key) as ca, api.client(b.key) as cb:
        mine = await create(ca, "Walrus", "walrus tusks", "zoo", ["mine"])
        theirs = await create(cb, "Walrus", "walrus tusks", "private", ["theirs"])
        ra = await found(search_stack, ca, "walrus", 1)
        rb = await found(search_stack, cb, "walrus", 1)
        assert [h["id"] for h in ra["hits"]] == [mine["id"]]
        assert [h["id"] for h in rb["hits"]] == [theirs["id"]]
        assert ra["facets"] == {"collections": {"zoo": 1}, "tags": {"mine": 1}}
        assert (await search(ca, collection="private"))["hits"] == []


async def test_bad_parameters_are_422(search_stack: Stack) -> None:
    api = search_stack.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        await create(client, "x", "alpha beta", "c", [])
        cases: list[dict[str, Any]] = [
            {"q": "a" * 501},
            {"limit": 0},
            {"limit": 1000},
            {"cursor": "not-a-cursor"},
            {"tags_mode": "some"},
            {"sort": "random"},
            {"metadata.bad field": "x"},
            {"created_after": "yesterday"},
            {"created_after": "2025-01-02T00:00:00Z", "created_before": "2025-01-01T00:00:00Z"},
        ]
        for params in cases:
            r = await client.get("/v1/search", params=params)
            assert r.status_code == 422, (params, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        # A cursor is bound to its query.
        for i in range(3):
            await create(client, f"n{i}", "gamma", "c", [])
        page = await search(client, collection="c", limit=1)
        r = await client.get(
            "/v1/search", params={"collection": "other", "cursor": page["next_cursor"]}
        )
        assert r.status_code == 422
        # A cursor whose weights do not fit its query is not one this API issued.
        await found(search_stack, client, "gamma", 3)
        page = await search(client, q="gamma", limit=1)
        raw = json.loads(base64.urlsafe_b64decode(page["next_cursor"] + "=="))
        for weights in ([1.0, 2.0], ["x"], [-1.0]):
            forged = base64.urlsafe_b64encode(json.dumps({**raw, "w": weights}).encode()).decode()
            r = await client.get("/v1/search", params={"q": "gamma", "cursor": forged})
            assert r.status_code == 422, (weights, r.text)
        assert (await client.get("/v1/search")).status_code == 200
        assert (
            await httpx.AsyncClient(
                transport=client._transport, base_url="http://capstan.test"
            ).get("/v1/search")
        ).status_code == 401


async def test_metadata_filters(search_stack: Stack) -> None:
    api = search_stack.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        en = await create(
            client, "Hello", "greeting words", "c", [], metadata={"lang": "en", "n": 3}
        )
        await create(client, "Bonjour", "greeting words", "c", [], metadata={"lang": "fr"})
        await found(search_stack, client, "greeting", 2)
        for params in ({"q": "greeting", "metadata.lang": "en"}, {"metadata.n": "3"}):
            result = await search(client, **params)
            assert [h["id"] for h in result["hits"]] == [en["id"]], params
        await asyncio.sleep(0)


async def test_stemming_rules_and_typos_through_the_api(search_stack: Stack) -> None:
    api = search_stack.api
    tenant = await api.tenant()
    async with api.client(tenant.key) as client:
        docs = {k: await create(client, *v) for k, v in WORDS.items()}
        # "landings" and "cheeses" are in no document as such: stemming finds them.
        result = await found(search_stack, client, "moon landings cheeses", 2)
        assert result["query"] == {
            "terms": ["moon", "land", "chees"],
            "phrases": [],
            "excluded": [],
            "min_should_match": 2,
            "typos": False,
        }
        # Two of three terms each: both found, by the minimum-should-match rule.
        assert {(h["id"], h["match"]) for h in result["hits"]} == {
            (docs["apollo"]["id"], "most"),
            (docs["cheese"]["id"], "most"),
        }
        marks = [f for h in result["hits"] for f in h["highlights"]]
        assert any("<em>landing</em>" in f for f in marks), marks
        phrase = await search(client, q='"made of cheese" -apollo')
        assert [(h["id"], h["match"]) for h in phrase["hits"]] == [(docs["cheese"]["id"], "all")]
        assert (await search(client, q="gardning"))["hits"] == []
        typo = await search(client, q="gardning", typos="true")
        assert [(h["id"], h["match"]) for h in typo["hits"]] == [(docs["garden"]["id"], "typo")]
        assert typo["query"]["typos"] is True
        assert (await search(client, q="-moon"))["hits"] == []
