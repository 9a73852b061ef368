"""/v1/webhooks: registration, validation, tenant isolation (both modes)."""

from __future__ import annotations

from tests.webhooks.conftest import Hooks


async def test_create_list_get_delete_and_secret_shown_once(hooks: Hooks) -> None:
    tenant = await hooks.api.tenant()
    async with hooks.client(tenant.key) as http:
        created = await http.post(
            "/v1/webhooks", json={"url": "https://hooks.example.com/in", "patterns": ["document.*"]}
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        assert created.headers["location"] == f"/v1/webhooks/{hook['id']}"
        assert hook["url"] == "https://hooks.example.com/in"
        assert hook["patterns"] == ["document.*"]
        assert hook["status"] == "active" and hook["disabled_reason"] is None
        assert hook["secret"].startswith("whsec_") and len(hook["secret"]) >= 6 + 43

        default = (await http.post("/v1/webhooks", json={"url": "http://a.example.org"})).json()
        assert default["patterns"] == ["#"]

        listed = await http.get("/v1/webhooks")
        assert listed.status_code == 200
        assert [h["id"] for h in listed.json()["items"]] == [hook["id"], default["id"]]
        one = await http.get(f"/v1/webhooks/{hook['id']}")
        assert one.status_code == 200
        assert "secret" not in one.json()
        assert all("secret" not in h for h in listed.json()["items"])
        assert hook["secret"] not in listed.text + one.text
        assert {k: v for k, v in hook.items() if k != "secret"} == one.json()

        deliveries = await http.get(f"/v1/webhooks/{hook['id']}/deliveries")
        assert deliveries.json() == {"items": [], "next_cursor": None}

        assert (await http.delete(f"/v1/webhooks/{hook['id']}")).status_code == 204
        assert (await http.get(f"/v1/webhooks/{hook['id']}")).status_code == 404
        assert (await http.delete(f"/v1/webhooks/{hook['id']}")).status_code == 404
        remaining = (await http.get("/v1/webhooks")).json()["items"]
        assert [h["id"] for h in remaining] == [default["id"]]


async def test_validation(hooks: Hooks) -> None:
    tenant = await hooks.api.tenant()
    bad_bodies = [
        {"url": "ftp://example.com/x"},
        {"url": "file:///etc/passwd"},
        {"url": "example.com/no-scheme"},
        {"url": "http://"},
        {"url": "http://example.com:99999/"},
        {"url": "https://example.com/" + "a" * 2000},
        {"url": "https://example.com/", "patterns": []},
        {"url": "https://example.com/", "patterns": ["Document.Created"]},
        {"url": "https://example.com/", "patterns": ["document..created"]},
        {"url": "https://example.com/", "patterns": ["document.cre*"]},
        {"url": "https://example.com/", "patterns": ["capstan document"]},
        {"url": "https://example.com/", "patterns": [f"p{i}" for i in range(21)]},
        {"url": "https://example.com/", "secret": "mine"},
        {},
        {"url": "https://example.com/a\x00b"},
        {"url": "https://example.com/a\rX-Injected: 1"},
        {"url": "https://exa\x7fmple.com/"},
        {"url": "https://example.com/a\x85b"},
    ]
    async with hooks.client(tenant.key, strict=True) as http:
        for body in bad_bodies:
            response = await http.post("/v1/webhooks", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        ok = await http.post(
            "/v1/webhooks",
            json={"url": "https://example.com/", "patterns": ["#", "*.created", "task.run_1-x"]},
        )
        assert ok.status_code == 201, ok.text
        # Literal private, loopback and link-local addresses are refused up front...
        for url in (
            "http://127.0.0.1:8080/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://[2002:a9fe:a9fe::1]/latest/meta-data",
            "http://[fec0::1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2001::1]/",
        ):
            refused = await http.post("/v1/webhooks", json={"url": url})
            assert refused.status_code == 422, (url, refused.text)
            assert "address" in refused.json()["detail"]
    # ...unless webhook_allow_private is set.
    async with hooks.client(tenant.key) as http:
        allowed = await http.post("/v1/webhooks", json={"url": "http://127.0.0.1:8080/"})
        assert allowed.status_code == 201


async def test_unauthenticated_is_401(hooks: Hooks) -> None:
    async with hooks.client("nope") as http:
        assert (await http.get("/v1/webhooks")).status_code == 401


async def test_another_tenants_webhook_is_invisible(hooks: Hooks) -> None:
    a, b = await hooks.api.tenant(), await hooks.api.tenant()
    hook = await hooks.create(a.key, "https://a.example.com/")
    async with hooks.client(b.key) as http:
        assert (await http.get("/v1/webhooks")).json()["items"] == []
        for method, path in (
            ("GET", f"/v1/webhooks/{hook['id']}"),
            ("DELETE", f"/v1/webhooks/{hook['id']}"),
            ("POST", f"/v1/webhooks/{hook['id']}/enable"),
            ("GET", f"/v1/webhooks/{hook['id']}/deliveries"),
        ):
            response = await http.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
    async with hooks.client(a.key) as http:
        assert (await http.get(f"/v1/webhooks/{hook['id']}")).status_code == 200
        assert [h["id"] for h in (await http.get("/v1/webhooks")).json()["items"]] == [hook["id"]]


async def test_deliveries_page_with_cursor(hooks: Hooks) -> None:
    from tests.webhooks.conftest import make_event

    tenant = await hooks.api.tenant()
    hook = await hooks.create(tenant.key, "https://a.example.com/")
    events = [make_event(tenant.id) for _ in range(5)]
    for event in events:
        await hooks.feed(event)
    seen: list[str] = []
    cursor = None
    async with hooks.client(tenant.key) as http:
        for _ in range(5):
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await http.get(f"/v1/webhooks/{hook['id']}/deliveries", params=params)).json()
            seen += [d["event_id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        bad = await http.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"cursor": "x"})
        assert bad.status_code == 422
    assert seen == [e.id for e in reversed(events)]  # newest first, each once
