"""The OpenAPI document tells the truth: errors are problem+json, every status the API answers
is declared for its operation, and declared limits are the enforced ones."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "responses" in op
    ]


async def test_every_error_is_declared_as_problem_json(api: Api) -> None:
    async with api.client() as http:
        schema = (await http.get("/openapi.json")).json()
    assert "Problem" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, method, op in operations(schema):
        errors = {s: r for s, r in op["responses"].items() if int(s) >= 400}
        assert {"422", "500"} <= set(errors), (method, path)
        for status, response in errors.items():
            assert list(response["content"]) == ["application/problem+json"], (method, path, status)
        if path.startswith("/v1/"):
            assert {"401", "429"} <= set(errors), (method, path)


async def test_declared_search_limits_are_the_enforced_ones(api: Api) -> None:
    settings = api.container.settings
    async with api.client() as http:
        schema = (await http.get("/openapi.json")).json()
    params = {p["name"]: p["schema"] for p in schema["paths"]["/v1/search"]["get"]["parameters"]}
    q = params["q"]["anyOf"][0]
    assert q["maxLength"] == settings.search_max_query_chars
    assert params["limit"]["maximum"] == settings.search_max_page_size
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        at_limit = await http.get("/v1/search", params={"q": "x" * q["maxLength"]})
        over = await http.get("/v1/search", params={"q": "x" * (q["maxLength"] + 1)})
        page_over = await http.get("/v1/search", params={"limit": params["limit"]["maximum"] + 1})
    assert at_limit.status_code == 200 and over.status_code == page_over.status_code == 422


async def test_each_error_the_api_answers_is_declared_for_its_operation(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client() as anonymous:
        schema = (await anonymous.get("/openapi.json")).json()
        unauthenticated = await anonymous.get("/v1/documents")
    async with api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": "x"})).json()
        await http.patch(f"/v1/documents/{doc['id']}", json={"title": "v2"})
        task = {"type": "text.language", "input": {"text": "x"}, "idempotency_key": "k"}
        await http.post("/v1/tasks", json=task)
        seen = [
            ("get", "/v1/documents", unauthenticated),
            ("get", "/v1/documents/{doc_id}", await http.get("/v1/documents/nope")),
            ("get", "/v1/documents", await http.get("/v1/documents?limit=0")),
            (
                "patch",
                "/v1/documents/{doc_id}",
                await http.patch(
                    f"/v1/documents/{doc['id']}", json={"title": "t"}, headers={"If-Match": '"1"'}
                ),
            ),
            (
                "post",
                "/v1/documents",
                await http.post(
                    "/v1/documents", content=b"{", headers={"content-type": "application/json"}
                ),
            ),
            (
                "post",
                "/v1/documents",
                await http.post("/v1/documents", json={"body": "x" * 2_000_000}),
            ),
            ("get", "/v1/workers", await http.get("/v1/workers")),
            ("post", "/v1/tasks", await http.post("/v1/tasks", json={**task, "priority": 3})),
        ]
    statuses = []
    for method, path, answer in seen:
        declared = schema["paths"][path][method]["responses"]
        statuses.append(answer.status_code)
        assert str(answer.status_code) in declared, (method, path, answer.status_code)
        assert answer.headers["content-type"] == "application/problem+json"
    assert statuses == [401, 404, 422, 412, 422, 413, 403, 409]
