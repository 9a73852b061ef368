"""API key and tenant lifecycle through the admin API, in both modes: revocation takes effect
on the key, its sessions and every instance's key cache; rotation overlaps; expiry; tenants
disabled and deleted; operator endpoints need the admin scope."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from capstan.db.schema import AuditEntry, Document, Task, Tenant, Webhook
from capstan.db.unit import unit_of_work
from tests.conftest import Api, start_api

# Long enough that only the revocation machinery, never the cache running out, can end a key.
LONG_CACHE = {"auth_cache_seconds": 3600.0}


@pytest.fixture
async def cached(api: Api) -> AsyncIterator[Api]:
    """The mode's API with verified keys cached for an hour."""
    instance = await start_api(api.container.settings.model_copy(update=LONG_CACHE))
    yield instance
    await instance.container.close()


async def status(http: httpx.AsyncClient, path: str = "/v1/documents") -> int:
    return (await http.get(path)).status_code


async def session_for(api: Api, key: str) -> str:
    async with api.client(key) as http:
        answer = await http.post("/v1/sessions")
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


def key_id(key: str) -> str:
    return key.split("_")[1]


async def test_operator_endpoints_need_an_admin_key(api: Api) -> None:
    tenant, admin = await api.tenant(), await api.tenant(admin=True)
    admin_session = await session_for(api, admin.key)
    reindex = {"type": "documents.reindex", "input": {}}
    async with api.client(tenant.key) as http:
        refused = {
            "workers": await http.get("/v1/workers"),
            "reindex": await http.post("/v1/tasks", json=reindex),
            "tenants": await http.get("/v1/admin/tenants"),
            "keys": await http.post(
                "/v1/admin/keys", json={"tenant": tenant.id, "name": "x", "admin": True}
            ),
        }
        types = {t["name"]: t for t in (await http.get("/v1/task-types")).json()}
    async with api.client(admin_session) as http:
        by_session = await http.get("/v1/admin/tenants")
    async with api.client(admin.key) as http:
        workers = await http.get("/v1/workers")
        tenants = await http.get("/v1/admin/tenants")
        queued = await http.post("/v1/tasks", json=reindex)

    assert {k: r.status_code for k, r in refused.items()} == dict.fromkeys(refused, 403)
    assert all(r.headers["content-type"] == "application/problem+json" for r in refused.values())
    assert types["documents.reindex"]["admin_only"] is True
    assert types["text.language"]["admin_only"] is False
    assert by_session.status_code == 403  # sessions carry no scope
    assert workers.status_code == tenants.status_code == 200
    assert queued.status_code == 202
    assert {tenant.id, admin.id} <= {t["id"] for t in tenants.json()}


async def test_revoking_a_key_ends_it_and_its_sessions_at_once(cached: Api) -> None:
    tenant, admin = await cached.tenant(), await cached.tenant(admin=True)
    session = await session_for(cached, tenant.key)
    async with cached.client(tenant.key) as by_key, cached.client(session) as by_session:
        assert (await status(by_key), await status(by_session)) == (200, 200)  # key cached
        async with cached.client(admin.key) as http:
            revoked = await http.post(f"/v1/admin/keys/{key_id(tenant.key)}/revoke")
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        assert (await status(by_key), await status(by_session)) == (401, 401)
        assert (await by_key.post("/v1/sessions")).status_code == 401


async def test_a_revocation_reaches_another_instance_at_its_next_poll(cached: Api) -> None:
    """Instance B caches the key and holds a session; A revokes; B's watcher applies it."""
    other = await start_api(cached.container.settings)
    try:
        tenant, admin = await cached.tenant(), await cached.tenant(admin=True)
        session_b = await session_for(other, tenant.key)
        async with other.client(tenant.key) as key_b, other.client(session_b) as sess_b:
            assert (await status(key_b), await status(sess_b)) == (200, 200)
            async with cached.client(admin.key) as http:
                revoked = await http.post(f"/v1/admin/keys/{key_id(tenant.key)}/revoke")
            assert revoked.status_code == 200
            assert await status(key_b) == 200  # B's cache does not know yet

            applied = await other.container.revocations.poll_once()
            assert key_id(tenant.key) in applied
            assert (await status(key_b), await status(sess_b)) == (401, 401)
            assert await other.container.revocations.poll_once() == []  # applied once
    finally:
        await other.container.close()


async def test_rotation_keeps_the_old_key_working_for_the_overlap_only(cached: Api) -> None:
    tenant, admin = await cached.tenant(), await cached.tenant(admin=True)
    async with cached.client(admin.key) as http:
        overlapping = await http.post(
            f"/v1/admin/keys/{key_id(tenant.key)}/rotate", json={"overlap_seconds": 3600}
        )
        assert overlapping.status_code == 201, overlapping.text
        new_key = overlapping.json()["new"]["api_key"]
        immediate = await http.post(
            f"/v1/admin/keys/{key_id(new_key)}/rotate", json={"overlap_seconds": 0}
        )
        newest = immediate.json()["new"]["api_key"]
        listed = {k["id"]: k for k in (await http.get(f"/v1/admin/keys?tenant={tenant.id}")).json()}

    ends = datetime.fromisoformat(overlapping.json()["old"]["expires_at"])
    assert timedelta(minutes=59) < ends - datetime.now(UTC) <= timedelta(hours=1)
    for key, expected in ((tenant.key, 200), (new_key, 401), (newest, 200)):
        async with cached.client(key) as http:
            assert await status(http) == expected, key
    assert listed[key_id(tenant.key)]["status"] == "active"  # until its overlap ends
    assert listed[key_id(new_key)]["status"] == "expired"
    assert set(listed) == {key_id(k) for k in (tenant.key, new_key, newest)}


async def test_an_expiring_key_and_its_sessions_stop_at_its_expiry(cached: Api) -> None:
    tenant = await cached.tenant()
    async with unit_of_work(cached.container.db) as uow:
        created = await cached.container.lifecycle.create_key(
            uow, tenant.id, "short", expires_at=datetime.now(UTC) + timedelta(seconds=2)
        )
    async with cached.client(created.plaintext) as http:
        assert await status(http) == 200  # now cached
        opened = (await http.post("/v1/sessions")).json()
    assert opened["expires_in"] <= 2  # a session never outlives its key
    await asyncio.sleep(2.2)
    async with cached.client(created.plaintext) as http, cached.client(opened["token"]) as s:
        assert (await status(http), await status(s)) == (401, 401)


async def test_a_disabled_tenant_is_refused_until_enabled(cached: Api) -> None:
    tenant, admin = await cached.tenant(), await cached.tenant(admin=True)
    session = await session_for(cached, tenant.key)
    async with cached.client(tenant.key) as by_key, cached.client(admin.key) as http:
        assert await status(by_key) == 200
        disabled = await http.post(f"/v1/admin/tenants/{tenant.id}/disable")
        assert disabled.json()["status"] == "disabled"
        assert await status(by_key) == 401
        async with cached.client(session) as by_session:
            assert await status(by_session) == 401
        enabled = await http.post(f"/v1/admin/tenants/{tenant.id}/enable")
        assert enabled.json()["status"] == "active"
        assert await status(by_key) == 200


async def test_deleting_a_tenant_deletes_its_data_and_ends_its_keys(cached: Api) -> None:
    tenant, bystander, admin = (
        await cached.tenant(),
        await cached.tenant(),
        await cached.tenant(admin=True),
    )
    async with cached.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": "to be forgotten"})).json()
        await http.get(f"/v1/documents/{doc['id']}")  # cached
        await http.post("/v1/tasks", json={"type": "text.language", "input": {"text": "x"}})
        await http.post("/v1/webhooks", json={"url": "https://example.com/h"})
    async with cached.client(bystander.key) as http:
        kept = (await http.post("/v1/documents", json={"body": "stays"})).json()
    async with cached.client(admin.key) as http:
        deleted = await http.delete(f"/v1/admin/tenants/{tenant.id}")
        again = await http.delete(f"/v1/admin/tenants/{tenant.id}")
        tenants = {t["id"] for t in (await http.get("/v1/admin/tenants")).json()}

    assert (deleted.status_code, again.status_code) == (204, 404)
    assert tenant.id not in tenants and bystander.id in tenants
    async with cached.client(tenant.key) as http:
        assert await status(http) == 401
    async with cached.client(bystander.key) as http:
        assert (await http.get(f"/v1/documents/{kept['id']}")).status_code == 200
    async with cached.container.db() as session:
        for table in (Tenant, Document, Task, Webhook, AuditEntry):
            column = Tenant.id if table is Tenant else table.tenant_id
            left = await session.scalar(
                select(func.count()).select_from(table).where(column == tenant.id)
            )
            assert left == 0, table.__tablename__


def test_admin_api_is_in_the_openapi_document(tmp_path: Path) -> None:
    from capstan.api.app import create_app
    from tests.conftest import embedded_settings

    paths = create_app(embedded_settings(tmp_path)).openapi()["paths"]
    assert {"/v1/admin/tenants", "/v1/admin/keys", "/v1/admin/keys/{key_id}/rotate"} <= set(paths)


async def test_a_tenant_named_like_another_tenants_id_is_not_confused(api: Api) -> None:
    target, admin = await api.tenant(), await api.tenant(admin=True)
    impostor = await api.tenant(name=target.id)
    async with api.client(admin.key) as http:
        disabled = await http.post(f"/v1/admin/tenants/{target.id}/disable")
    assert disabled.status_code == 200 and disabled.json()["id"] == target.id
    async with api.client(impostor.key) as http:
        assert await status(http) == 200
