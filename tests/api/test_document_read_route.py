"""GET /v1/documents/{id} through the lean route: every contract of the FastAPI route kept,
in both modes, and If-None-Match answered with 304."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from capstan.api.app import create_app
from tests.conftest import Api, start_api

PROBLEM = "application/problem+json"
PINNED_OPENAPI = Path(__file__).with_name("openapi_get_document.json")


async def _document(http: httpx.AsyncClient, body: str = "x") -> tuple[dict[str, object], str]:
    doc = (await http.post("/v1/documents", json={"title": "t", "body": body})).json()
    return doc, f"/v1/documents/{doc['id']}"


async def test_a_hit_answers_with_etag_x_cache_request_id_and_the_exact_body(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc, url = await _document(http)
        miss = await http.get(url)
        hit = await http.get(url, headers={"X-Request-ID": "read-1"})
    assert (miss.status_code, miss.headers["x-cache"]) == (200, "miss")
    assert (hit.status_code, hit.headers["x-cache"]) == (200, "hit")
    assert hit.content == miss.content and hit.json() == doc
    assert hit.headers["etag"] == '"1"'
    assert hit.headers["content-type"] == "application/json"
    assert int(hit.headers["content-length"]) == len(hit.content)
    assert hit.headers["x-request-id"] == "read-1"


async def test_metrics_count_the_lean_route_under_its_template(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        _doc, url = await _document(http)
        for _ in range(3):
            await http.get(url)
        await http.get("/v1/documents/does-not-exist")
        text = (await http.get("/metrics")).text
    route = 'method="GET",route="/v1/documents/{doc_id}"'
    assert f'capstan_http_requests_total{{{route},status="200"}} 3.0' in text
    assert f'capstan_http_requests_total{{{route},status="404"}} 1.0' in text
    assert f"capstan_http_request_duration_seconds_count{{{route}}} 4.0" in text
    assert 'capstan_cache_requests_total{cache="documents",result="hit"} 2.0' in text


async def test_no_cache_bypasses_the_cache(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc, url = await _document(http)
        await http.get(url)
        bypass = await http.get(url, headers={"Cache-Control": "max-age=0, No-Cache"})
    assert (bypass.headers["x-cache"], bypass.json()) == ("bypass", doc)


async def test_if_none_match_is_304_with_the_etag_and_no_body(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        _doc, url = await _document(http)
        await http.get(url)
        for tag in ('"1"', 'W/"1"', '"7", "1"', "*"):
            same = await http.get(url, headers={"If-None-Match": tag})
            assert (same.status_code, same.content) == (304, b""), tag
            assert same.headers["etag"] == '"1"' and same.headers["x-cache"] == "hit"
        other = await http.get(url, headers={"If-None-Match": '"2"'})
        assert (other.status_code, other.headers["etag"]) == (200, '"1"')

        await http.patch(url, json={"title": "t2"})
        changed = await http.get(url, headers={"If-None-Match": '"1"'})
        assert (changed.status_code, changed.json()["title"]) == (200, "t2")
        assert changed.headers["etag"] == '"2"'
        gone = await http.get("/v1/documents/nope", headers={"If-None-Match": "*"})
    assert gone.status_code == 404


async def test_without_credentials_it_is_401_problem_json(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        _doc, url = await _document(http)
        await http.get(url)  # cached: the refusal must not depend on a miss
    for headers in ({}, {"Authorization": f"Basic {tenant.key}"}, {"Authorization": "Bearer"}):
        async with api.client() as http:
            answer = await http.get(url, headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["content-type"] == PROBLEM
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["type"].endswith("/unauthorized") and answer.json()["request_id"]
    async with api.client(tenant.key[:-4] + "abcd") as http:
        assert (await http.get(url)).status_code == 401


async def test_a_session_token_reads_until_it_is_revoked(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        token = (await http.post("/v1/sessions")).json()["token"]
        doc, url = await _document(http)
        await http.get(url)
    async with api.client(token) as by_session:
        hit = await by_session.get(url)
        assert (hit.status_code, hit.headers["x-cache"], hit.json()) == (200, "hit", doc)
        await by_session.delete("/v1/sessions/current")
        assert (await by_session.get(url)).status_code == 401


async def test_exceeding_the_rate_limit_is_429_with_retry_after_on_hits_too(api: Api) -> None:
    settings = api.container.settings.model_copy(
        update={"rate_limit_per_minute": 60, "rate_limit_burst": 3}
    )
    limited = await start_api(settings)
    try:
        tenant = await limited.tenant()
        async with limited.client(tenant.key) as http:
            _doc, url = await _document(http)  # the first request of the burst
            answers = [await http.get(url) for _ in range(3)]
        assert [(a.status_code, a.headers.get("x-cache")) for a in answers] == [
            (200, "miss"),
            (200, "hit"),
            (429, None),
        ]
        refused = answers[2]
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json()["type"].endswith("/rate-limited")
    finally:
        await limited.container.close()


async def test_other_methods_on_the_path_answer_as_before(api: Api) -> None:
    fastapi_only = _fastapi_only(api)
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        _doc, url = await _document(http)
    answers = {}
    for name, app in (("lean", api), ("reference", fastapi_only)):
        async with app.client(tenant.key) as http:
            head, put = await http.head(url), await http.put(url, json={})
            answers[name] = [(a.status_code, a.headers.get("allow")) for a in (head, put)]
    assert answers["lean"] == answers["reference"]
    assert [status for status, _allow in answers["lean"]] == [405, 405]
    async with api.client(tenant.key) as http:
        assert (await http.delete(url)).status_code == 204


def _fastapi_only(api: Api) -> Api:
    """The same container served without the lean route: GET goes to the FastAPI route."""
    return Api(
        api.container, create_app(api.container.settings, api.container, lean_document_read=False)
    )


async def test_the_lean_route_and_the_fastapi_route_answer_alike(api: Api) -> None:
    """The FastAPI route (what OpenAPI describes) and the lean one, on one container."""
    fastapi_only = _fastapi_only(api)
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        _doc, url = await _document(http)
        await http.get(url)
    requests = [
        (tenant.key, url, {}),
        (tenant.key, url, {"Cache-Control": "no-cache"}),
        (tenant.key, url, {"If-None-Match": '"1"'}),
        (tenant.key, url, {"If-None-Match": '"9"'}),
        (tenant.key, "/v1/documents/missing", {}),
        (None, url, {}),
        ("cst_0123456789abcdef_nope", url, {}),
    ]
    for key, path, headers in requests:
        answers = []
        for app in (api, fastapi_only):
            async with app.client(key) as http:
                answers.append(await http.get(path, headers={**headers, "X-Request-ID": "same"}))
        lean, reference = answers
        assert lean.status_code == reference.status_code, (path, headers)
        assert lean.content == reference.content, (path, headers)
        for name in ("etag", "x-cache", "content-type", "www-authenticate", "x-request-id"):
            assert lean.headers.get(name) == reference.headers.get(name), (name, path, headers)


async def test_openapi_still_describes_the_read_as_before(api: Api) -> None:
    async with api.client() as http:
        spec = (await http.get("/openapi.json")).json()
    described = {
        "operation": spec["paths"]["/v1/documents/{doc_id}"]["get"],
        "DocumentRead": spec["components"]["schemas"]["DocumentRead"],
        "HTTPBearer": spec["components"]["securitySchemes"]["HTTPBearer"],
    }
    assert described == json.loads(PINNED_OPENAPI.read_text())
