"""Error shapes, limits, health, readiness and metrics, in both modes."""

from __future__ import annotations

from tests.conftest import Api

PROBLEM = "application/problem+json"


async def test_malformed_json_is_422_problem(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        answer = await http.post(
            "/v1/documents", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM


async def test_invalid_fields_are_422_with_the_field_named(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        missing = await http.post("/v1/documents", json={"title": "no body"})
        wrong = await http.post("/v1/documents", json={"body": "x", "tags": "not-a-list"})
        extra = await http.post("/v1/documents", json={"body": "x", "surprise": 1})
        bad_collection = await http.post("/v1/documents", json={"body": "x", "collection": "a b"})
        bad_limit = await http.get("/v1/documents", params={"limit": 100000})
        bad_cursor = await http.get("/v1/documents", params={"cursor": "!!!"})
        null_field = await http.post("/v1/documents", json={"body": "x"})
        doc_id = null_field.json()["id"]
        patch_null = await http.patch(f"/v1/documents/{doc_id}", json={"body": None})
        bad_if_match = await http.patch(
            f"/v1/documents/{doc_id}", json={"body": "y"}, headers={"If-Match": "abc"}
        )
    for answer in (missing, wrong, extra, bad_collection, bad_limit, bad_cursor, patch_null):
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == PROBLEM
    assert "body" in missing.json()["detail"]
    assert "tags" in wrong.json()["detail"]
    assert bad_if_match.status_code == 422


async def test_an_oversized_body_is_413_and_nothing_is_written(api: Api) -> None:
    tenant = await api.tenant()
    limit = api.container.settings.max_body_bytes
    async with api.client(tenant.key) as http:
        answer = await http.post("/v1/documents", json={"body": "x" * (limit + 10)})
        listing = (await http.get("/v1/documents")).json()
    assert answer.status_code == 413 and answer.headers["content-type"] == PROBLEM
    assert listing["items"] == []


async def test_an_oversized_chunked_body_is_413(api: Api) -> None:
    tenant = await api.tenant()
    limit = api.container.settings.max_body_bytes

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    async with api.client(tenant.key) as http:
        answer = await http.post(
            "/v1/documents", content=chunks(), headers={"content-type": "application/json"}
        )
    assert answer.status_code == 413


async def test_unknown_route_is_404_problem(api: Api) -> None:
    async with api.client() as http:
        answer = await http.get("/v1/nothing-here")
    assert answer.status_code == 404 and answer.headers["content-type"] == PROBLEM


async def test_request_id_is_honoured_or_made(api: Api) -> None:
    async with api.client() as http:
        given = await http.get("/healthz", headers={"X-Request-ID": "abc-123"})
        made = await http.get("/healthz")
        hostile = await http.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert given.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32
    assert hostile.headers["x-request-id"] != "x" * 500


async def test_readyz_lists_every_dependency(api: Api) -> None:
    async with api.client() as http:
        answer = await http.get("/readyz")
    assert answer.status_code == 200
    body = answer.json()
    assert set(body["checks"]) == {"database", "cache", "broker", "search"}
    assert body["checks"]["database"]["required"] is True
    assert body["checks"]["database"]["status"] == "up"


async def test_metrics_count_requests_and_cache_results(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": "m"})).json()
        await http.get(f"/v1/documents/{doc['id']}")
        await http.get(f"/v1/documents/{doc['id']}")
        text = (await http.get("/metrics")).text
    assert (
        'capstan_http_requests_total{method="POST",route="/v1/documents",status="201"} 1.0' in text
    )
    assert 'capstan_cache_requests_total{cache="documents",result="hit"} 1.0' in text
    assert 'capstan_cache_requests_total{cache="documents",result="miss"} 1.0' in text
    assert "capstan_http_request_duration_seconds_bucket" in text
    assert "capstan_http_requests_in_flight" in text


async def test_openapi_is_served(api: Api) -> None:
    async with api.client() as http:
        spec = (await http.get("/openapi.json")).json()
    assert "/v1/documents/{doc_id}" in spec["paths"]
