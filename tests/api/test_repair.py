"""`capstan data check`: rows stored before the door refused them are found, then fixed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, text

from capstan.db.schema import Document
from capstan.repair import NOT_RENDERED
from tests.api.test_input_safety import nested_json
from tests.conftest import Api, Tenant, embedded_settings, start_api

INSERT = (
    "INSERT INTO documents (id, tenant_id, collection, title, body, tags, metadata, version,"
    " created_at, updated_at) VALUES (:id, :tenant, 'default', :title, 'b', {tags}, {meta}, 1,"
    " :now, :now)"
)


async def store_raw(api: Api, tenant: Tenant, metadata_json: str, title: str = "t") -> str:
    """Write a document row directly, as the API used to before it refused such values."""
    doc_id = str(uuid.uuid4())
    jsonb = api.container.engine.dialect.name == "postgresql"
    sql = INSERT.format(
        tags="CAST(:tags AS jsonb)" if jsonb else ":tags",
        meta="CAST(:meta AS jsonb)" if jsonb else ":meta",
    )
    now = datetime.now(UTC)
    async with api.container.db.begin() as session:
        await session.execute(
            text(sql),
            {
                "id": doc_id,
                "tenant": tenant.id,
                "title": title,
                "tags": "[]",
                "meta": metadata_json,
                "now": now if jsonb else now.strftime("%Y-%m-%d %H:%M:%S.%f"),
            },
        )
    return doc_id


def poisoned(api: Api) -> dict[str, str]:
    """Metadata each mode's database accepted although no read of it could succeed."""
    values = {"989 levels deep": f'{{"k": {nested_json(989)}}}'}
    if api.container.engine.dialect.name == "sqlite":  # PostgreSQL refuses these three
        values |= {
            "lone surrogate": '{"k": "\\ud800", "\\udc00": 1}',
            "NaN": '{"k": NaN}',
            "NUL": '{"k": "a\\u0000b"}',
        }
    return values


async def test_check_reports_then_fix_makes_every_row_readable(api: Api) -> None:
    from capstan.repair import check

    tenant = await api.tenant()
    ids = {name: await store_raw(api, tenant, raw) for name, raw in poisoned(api).items()}
    healthy = await store_raw(api, tenant, '{"fine": [1, "é"]}')

    reported = [f async for f in check(api.container, fix=False, tenant_id=tenant.id)]
    # The healthy row is readable, but written around the API it has no stored rendering.
    assert {f.row_id for f in reported} == {*ids.values(), healthy}
    assert [f.problem for f in reported if f.row_id == healthy] == [NOT_RENDERED]
    assert all(not f.fixed for f in reported)

    fixed = [f async for f in check(api.container, fix=True, tenant_id=tenant.id)]
    assert {f.row_id for f in fixed} == {*ids.values(), healthy} and all(f.fixed for f in fixed)
    assert [f async for f in check(api.container, fix=False, tenant_id=tenant.id)] == []
    async with api.container.db() as session:
        rows = await session.execute(select(Document.id, Document.rendered))
        stored = {doc_id: body for doc_id, body in rows}

    async with api.client(tenant.key) as http:
        listing = await http.get("/v1/documents")
        reads = {name: await http.get(f"/v1/documents/{doc_id}") for name, doc_id in ids.items()}
        untouched = (await http.get(f"/v1/documents/{healthy}")).json()
    assert listing.status_code == 200 and len(listing.json()["items"]) == len(ids) + 1
    assert all(r.status_code == 200 and r.json()["version"] == 2 for r in reads.values())
    assert untouched["version"] == 1 and untouched["metadata"] == {"fine": [1, "é"]}
    # Every row now carries the bytes the API serves for its version (what the gateway reads).
    for doc_id in [*ids.values(), healthy]:
        async with api.client(tenant.key) as http:
            served = await http.get(
                f"/v1/documents/{doc_id}", headers={"Cache-Control": "no-cache"}
            )
        assert stored[doc_id] == served.content
    if "lone surrogate" in reads:
        assert reads["lone surrogate"].json()["metadata"] == {"k": "\ufffd", "\ufffd": 1}
        assert reads["NaN"].json()["metadata"] == {"k": None}
        assert reads["NUL"].json()["metadata"] == {"k": "a\ufffdb"}
    deep = reads["989 levels deep"].json()["metadata"]
    depth = 0
    while isinstance(deep, dict) and deep:
        deep, depth = next(iter(deep.values())), depth + 1
    assert depth == 32 and deep is None  # level 33 became null (metadata itself is level 1)


def test_the_cli_exits_1_when_it_finds_rows_and_0_once_fixed(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)

    async def seed() -> None:
        api = await start_api(settings)
        try:
            await store_raw(api, await api.tenant(), '{"k": "\\ud800"}')
        finally:
            await api.container.close()

    asyncio.run(seed())
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env["CAPSTAN_DATA_DIR"] = str(settings.data_dir)
    capstan = [sys.executable, "-m", "capstan.cli.main", "data", "check"]
    found = subprocess.run(capstan, env=env, capture_output=True, text=True)
    fixed = subprocess.run([*capstan, "--fix"], env=env, capture_output=True, text=True)
    clean = subprocess.run(capstan, env=env, capture_output=True, text=True)
    assert found.returncode == 1 and "lone UTF-16 surrogate" in found.stdout, found.stderr
    assert fixed.returncode == 0 and "1 unreadable row(s), fixed" in fixed.stderr
    assert clean.returncode == 0 and "0 unreadable row(s)" in clean.stderr


async def test_a_task_input_stored_too_deep_is_found_and_cut(api: Api) -> None:
    from sqlalchemy import update

    from capstan.db.schema import Task
    from capstan.repair import check

    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        task = (
            await http.post("/v1/tasks", json={"type": "text.language", "input": {"text": "x"}})
        ).json()
    too_deep: dict[str, object] = {}
    for _ in range(39):
        too_deep = {"a": too_deep}
    async with api.container.db.begin() as session:
        await session.execute(
            update(Task).where(Task.id == task["id"]).values(input={"text": "x", "a": too_deep})
        )

    [found] = [f async for f in check(api.container, fix=True, tenant_id=tenant.id)]
    async with api.client(tenant.key) as http:
        reread = (await http.get(task["url"])).json()
    assert (found.table, found.row_id, found.fixed) == ("tasks", task["id"], True)
    assert "nested deeper than 32 levels" in found.problem
    assert reread["input"]["text"] == "x"
    assert [f async for f in check(api.container, fix=False, tenant_id=tenant.id)] == []
