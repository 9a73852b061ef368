"""Every version of a document is rendered once, when it is written (`documents.rendered`), and
every read of that version returns those bytes: the write's response, a miss, a hit, a
`no-cache` read (on SQLite and PostgreSQL, whose jsonb would reorder and renumber metadata)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select, text

from capstan.db.schema import Document
from tests.conftest import Api

AWKWARD = {
    "body": "b",
    "metadata": {"zz": 1.0, "a": [1e20, 12345678901234567890], "100": None, "é": "\u2028"},
}


async def stored(api: Api, doc_id: str) -> bytes | None:
    async with api.container.db() as session:
        return await session.scalar(select(Document.rendered).where(Document.id == doc_id))


async def test_each_version_is_served_as_it_was_rendered_at_write_time(api: Api) -> None:
    t = await api.tenant()
    async with api.client(t.key) as http:
        created = await http.post("/v1/documents", json=AWKWARD)
        doc_id = created.json()["id"]
        assert created.content.index(b'"zz"') < created.content.index(b'"a"')  # as written
        reads = [
            await http.get(f"/v1/documents/{doc_id}"),
            await http.get(f"/v1/documents/{doc_id}"),
            await http.get(f"/v1/documents/{doc_id}", headers={"Cache-Control": "no-cache"}),
        ]
        assert [r.headers["x-cache"] for r in reads] == ["miss", "hit", "bypass"]
        assert all(r.content == created.content for r in reads)
        assert await stored(api, doc_id) == created.content
        # A PATCH that changes nothing answers with the current version's bytes.
        same = await http.patch(f"/v1/documents/{doc_id}", json={"body": "b"})
        assert same.headers["etag"] == '"1"' and same.content == created.content
        # A new version: new bytes, stored, served.
        patched = await http.patch(f"/v1/documents/{doc_id}", json={"title": "new"})
        assert patched.headers["etag"] == '"2"'
        assert await stored(api, doc_id) == patched.content
        read = await http.get(f"/v1/documents/{doc_id}")
        assert read.headers["etag"] == '"2"' and read.content == patched.content


async def test_a_row_written_around_the_api_is_rendered_on_read(api: Api) -> None:
    t = await api.tenant()
    doc_id = str(uuid.uuid4())
    jsonb = api.container.engine.dialect.name == "postgresql"
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with api.container.db.begin() as session:
        await session.execute(
            text(
                "INSERT INTO documents (id, tenant_id, collection, title, body, tags, metadata,"
                " version, created_at, updated_at) VALUES (:id, :t, 'c', 'T', 'B', :tags, :meta,"
                " 1, :now, :now)"
            ),
            {
                "id": doc_id,
                "t": t.id,
                "tags": '["x"]',
                "meta": '{"k": 1}',
                "now": now if jsonb else now.strftime("%Y-%m-%d %H:%M:%S.%f"),
            },
        )
    assert await stored(api, doc_id) is None
    async with api.client(t.key) as http:
        read = await http.get(f"/v1/documents/{doc_id}")
    assert read.status_code == 200
    assert (
        read.content
        == (
            f'{{"id":"{doc_id}","collection":"c","title":"T","body":"B","tags":["x"],'
            '"metadata":{"k":1},"version":1,"created_at":"2026-01-02T03:04:05Z",'
            '"updated_at":"2026-01-02T03:04:05Z"}'
        ).encode()
    )
