"""API keys, sessions, rate limits and tenant isolation, in both modes."""

from __future__ import annotations

from tests.conftest import Api, start_api


async def test_no_key_is_401_problem_json(api: Api) -> None:
    async with api.client() as http:
        answer = await http.get("/v1/documents")
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    problem = answer.json()
    assert problem["status"] == 401 and problem["type"].endswith("/unauthorized")
    assert "Authorization" in problem["detail"]


async def test_a_wrong_key_is_401(api: Api) -> None:
    tenant = await api.tenant()
    forged = tenant.key[:-4] + "abcd"
    for bad in (forged, "cst_0123456789abcdef_nope", "garbage", "csts_unknown"):
        async with api.client(bad) as http:
            answer = await http.get("/v1/documents")
        assert answer.status_code == 401, bad


async def test_tenant_b_cannot_see_or_touch_tenant_a_documents(api: Api) -> None:
    a, b = await api.tenant(), await api.tenant()
    async with api.client(a.key) as http_a, api.client(b.key) as http_b:
        doc = (await http_a.post("/v1/documents", json={"body": "a's secret"})).json()
        assert (await http_a.get(f"/v1/documents/{doc['id']}")).headers["x-cache"] == "miss"
        assert (await http_a.get(f"/v1/documents/{doc['id']}")).headers["x-cache"] == "hit"

        # A's entry is cached now; B must still get 404, not A's cached copy.
        read = await http_b.get(f"/v1/documents/{doc['id']}")
        patch = await http_b.patch(f"/v1/documents/{doc['id']}", json={"body": "mine"})
        delete = await http_b.delete(f"/v1/documents/{doc['id']}")
        listing = (await http_b.get("/v1/documents")).json()
        still = (await http_a.get(f"/v1/documents/{doc['id']}")).json()

    assert (read.status_code, patch.status_code, delete.status_code) == (404, 404, 404)
    assert read.json()["detail"] == patch.json()["detail"]  # no hint that it exists
    assert listing["items"] == []
    assert still["body"] == "a's secret" and still["version"] == 1


async def test_a_session_token_works_like_the_key_until_revoked(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        created = await http.post("/v1/sessions")
        assert created.status_code == 201
        session = created.json()
        assert session["tenant_id"] == tenant.id and session["expires_in"] > 0
        doc = (await http.post("/v1/documents", json={"body": "x"})).json()

    async with api.client(session["token"]) as by_session:
        assert (await by_session.get(f"/v1/documents/{doc['id']}")).status_code == 200
        nested = await by_session.post("/v1/sessions")
        assert nested.status_code == 401
        assert (await by_session.delete("/v1/sessions/current")).status_code == 204
        after = await by_session.get(f"/v1/documents/{doc['id']}")
    assert after.status_code == 401

    async with api.client(tenant.key) as http:
        revoke_with_key = await http.delete("/v1/sessions/current")
    # Authenticated, but there is no session to revoke: a 400 that says why, not a 401.
    assert revoke_with_key.status_code == 400
    assert revoke_with_key.headers["content-type"] == "application/problem+json"
    assert "API key, not a session token" in revoke_with_key.json()["detail"]


async def test_exceeding_the_rate_limit_is_429_with_retry_after(api: Api) -> None:
    settings = api.container.settings.model_copy(
        update={"rate_limit_per_minute": 60, "rate_limit_burst": 3}
    )
    limited = await start_api(settings)
    try:
        tenant = await limited.tenant()
        async with limited.client(tenant.key) as http:
            codes = [(await http.get("/v1/documents")).status_code for _ in range(4)]
            refused = await http.get("/v1/documents")
        assert codes == [200, 200, 200, 429]
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["content-type"] == "application/problem+json"
    finally:
        await limited.container.close()
