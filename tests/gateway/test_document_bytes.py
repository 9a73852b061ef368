"""One document, the same bytes from the Python API and the Node.js gateway, from either one's
cache fill, from the database, and for every version: both serve what Python rendered when it
wrote the version (`documents.rendered`), so neither service serializes a row on a read."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from capstan.db.schema import Document
from tests.gateway.conftest import Both

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]

# Values whose JSON a second serializer would write differently: escapes, raw UTF-8, floats
# in exponent form, an integer past 2**53, integer-like and out-of-order keys (jsonb would
# reorder them), an empty object.
AWKWARD = {
    "title": 'Grüße \u2028 "quoted" \\ <tag>',
    "body": "line\nnext\ttab \x01 😀",
    "tags": ["b", "a"],
    "metadata": {"z": 1.0, "a": [1e20, 1.5e-7, 12345678901234567890], "100": None, "n": {}},
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def stored(both: Both, doc_id: str) -> bytes | None:
    async with both.stack.api.container.db() as session:
        return await session.scalar(select(Document.rendered).where(Document.id == doc_id))


async def test_cache_entries_filled_by_either_service_serve_the_other_byte_for_byte(
    both: Both,
) -> None:
    api, gw = both.stack.api, both.gateway
    t = await api.tenant()
    async with (
        api.client(t.key) as py,
        httpx.AsyncClient(base_url=gw.url, headers=auth(t.key)) as node,
    ):
        # Python fills → Node hits; the create's own response is the same bytes.
        created = await py.post("/v1/documents", json=AWKWARD)
        one = created.json()
        py_miss = await py.get(f"/v1/documents/{one['id']}")
        assert py_miss.headers["x-cache"] == "miss"
        assert py_miss.content == created.content == await stored(both, one["id"])
        node_hit = await node.get(f"/v1/documents/{one['id']}")
        assert node_hit.headers["x-cache"] == "hit"
        assert node_hit.content == py_miss.content
        assert node_hit.headers["etag"] == py_miss.headers["etag"] == '"1"'
        assert node_hit.headers["content-type"] == py_miss.headers["content-type"]
        # Node fills → Python hits, and both read the same stored bytes from the database.
        two = (await py.post("/v1/documents", json=AWKWARD)).json()
        node_miss = await node.get(f"/v1/documents/{two['id']}")
        assert node_miss.headers["x-cache"] == "miss"
        py_hit = await py.get(f"/v1/documents/{two['id']}")
        assert py_hit.headers["x-cache"] == "hit"
        assert py_hit.content == node_miss.content
        py_db = await py.get(f"/v1/documents/{two['id']}", headers={"Cache-Control": "no-cache"})
        node_db = await node.get(
            f"/v1/documents/{two['id']}", headers={"Cache-Control": "no-cache"}
        )
        assert node_db.headers["x-cache"] == "bypass"
        assert node_db.content == py_db.content == py_hit.content
        # 304 for the current ETag on both.
        for client in (py, node):
            same = await client.get(f"/v1/documents/{two['id']}", headers={"If-None-Match": '"1"'})
            assert same.status_code == 304 and same.content == b""
        # An update through Python is never followed by a stale read from Node, and each
        # version's bytes are the PATCH response's.
        for version in range(2, 22):
            answer = await py.patch(f"/v1/documents/{two['id']}", json={"body": f"v{version}"})
            assert answer.status_code == 200
            read = await node.get(f"/v1/documents/{two['id']}")
            assert read.headers["etag"] == f'"{version}"', read.headers
            assert read.content == answer.content
            # The cache subscriber may invalidate again (same version) when the event arrives.
            again = await node.get(f"/v1/documents/{two['id']}")
            assert again.headers["etag"] == f'"{version}"' and again.content == read.content
        # Delete through Python: Node answers 404 (problem+json), not the cached copy.
        await py.delete(f"/v1/documents/{two['id']}")
        gone = await node.get(f"/v1/documents/{two['id']}")
        assert gone.status_code == 404
        assert gone.headers["content-type"] == "application/problem+json"
        # Another tenant cannot read it through either service.
        other = await api.tenant()
        foreign = await node.get(f"/v1/documents/{one['id']}", headers=auth(other.key))
        assert foreign.status_code == 404
