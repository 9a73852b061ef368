"""What the API accepts it can store and read back; everything else is a 4xx at the door.

Each case here answered 500 before (and several were committed first, breaking every later
read of the document, the tenant's document list, or GET /v1/tasks for good). Both modes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import Api


def nested(levels: int) -> dict[str, Any]:
    """A JSON object `levels` deep: {"a": {"a": ... {}}}."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def nested_json(levels: int) -> str:
    """The same as JSON text, built without a recursive encoder (989 levels overflow it)."""
    return '{"a": ' * (levels - 1) + "{}" + "}" * (levels - 1)


# Raw JSON bodies: escapes such as \ud800 and NaN cannot be written with json=.
UNSTORABLE_DOCUMENTS = {
    "metadata nested 33 levels": json.dumps({"body": "x", "metadata": nested(33)}),
    "metadata nested 989 levels": f'{{"body": "x", "metadata": {nested_json(989)}}}',
    "lone surrogate in a metadata value": '{"body": "x", "metadata": {"k": "\\ud800"}}',
    "lone surrogate in a metadata key": '{"body": "x", "metadata": {"\\udc00": 1}}',
    "lone surrogate deep in a list": '{"body": "x", "metadata": {"k": [1, ["\\ud83d"]]}}',
    "lone surrogate in the title": '{"body": "x", "title": "a\\ud800b"}',
    "lone surrogate in a tag": '{"body": "x", "tags": ["\\ud800"]}',
    "lone surrogate in a field name": '{"body": "x", "\\ud800": 1}',
    "NUL in the body": '{"body": "x\\u0000y"}',
    "NUL in a metadata key": '{"body": "x", "metadata": {"\\u0000": 1}}',
    "NaN in metadata": '{"body": "x", "metadata": {"k": NaN}}',
    "Infinity in metadata": '{"body": "x", "metadata": {"k": -Infinity}}',
    "a number that parses as infinity": '{"body": "x", "metadata": {"k": 1e400}}',
}

# Unusual but storable: each must come back exactly as it was sent.
STORABLE_METADATA = {
    "nested exactly 32 levels": nested(32),
    "a paired surrogate (an emoji)": json.loads('{"k": "\\ud83d\\ude00"}'),
    "a 400-digit integer": {"k": 10**400},
    "an empty key": {"": [None, True, 1.5, "é"]},
}

JSON_HEADERS = {"content-type": "application/json"}


async def document_count(http: Any) -> int:
    listing = await http.get("/v1/documents", params={"limit": 200})
    assert listing.status_code == 200, listing.text
    return len(listing.json()["items"])


@pytest.mark.parametrize("raw", UNSTORABLE_DOCUMENTS.values(), ids=UNSTORABLE_DOCUMENTS.keys())
async def test_an_unstorable_document_is_422_and_nothing_is_stored(api: Api, raw: str) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        kept = (await http.post("/v1/documents", json={"body": "kept"})).json()
        created = await http.post("/v1/documents", content=raw, headers=JSON_HEADERS)
        patched = await http.patch(
            f"/v1/documents/{kept['id']}",
            content=raw.replace('"body": "x", ', ""),
            headers=JSON_HEADERS,
        )
        count = await document_count(http)
        reread = await http.get(
            f"/v1/documents/{kept['id']}", headers={"Cache-Control": "no-cache"}
        )

    # 422, or 400 when the body is too deep for the JSON parser itself.
    assert created.status_code in (400, 422), created.text
    assert created.headers["content-type"] == "application/problem+json"
    assert patched.status_code == created.status_code, patched.text
    assert count == 1
    assert reread.status_code == 200 and reread.json()["version"] == 1


@pytest.mark.parametrize("metadata", STORABLE_METADATA.values(), ids=STORABLE_METADATA.keys())
async def test_storable_metadata_reads_back_exactly(api: Api, metadata: dict[str, Any]) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        created = await http.post("/v1/documents", json={"body": "x", "metadata": metadata})
        assert created.status_code == 201, created.text
        doc_id = created.json()["id"]
        fresh = await http.get(f"/v1/documents/{doc_id}", headers={"Cache-Control": "no-cache"})
        listed = (await http.get("/v1/documents")).json()["items"]
    assert fresh.status_code == 200 and fresh.json()["metadata"] == metadata
    assert [d["metadata"] for d in listed] == [metadata]


@pytest.mark.parametrize(
    "raw_input",
    [
        '{"text": "a", "x": "\\ud800"}',
        '{"text": "a", "\\udfff": 1}',
        '{"text": "a\\u0000"}',
        json.dumps({"text": "a", "x": nested(40)}),
        '{"text": "a", "x": NaN}',
    ],
    ids=["surrogate value", "surrogate key", "NUL", "deep", "NaN"],
)
async def test_an_unstorable_task_input_is_422_and_the_task_list_still_reads(
    api: Api, raw_input: str
) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        answer = await http.post(
            "/v1/tasks",
            content=f'{{"type": "text.language", "input": {raw_input}}}',
            headers=JSON_HEADERS,
        )
        listing = await http.get("/v1/tasks")
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith("body: input")
    assert listing.status_code == 200 and listing.json()["items"] == []


async def test_run_at_with_an_offset_is_stored_at_that_instant(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        submitted = await http.post(
            "/v1/tasks",
            json={
                "type": "text.language",
                "input": {"text": "x"},
                "run_at": "2030-01-01T10:00:00+05:00",
            },
        )
        reread = (await http.get(submitted.json()["url"])).json()
    instant = datetime(2030, 1, 1, 5, 0, tzinfo=UTC)
    assert datetime.fromisoformat(submitted.json()["run_at"]) == instant
    assert datetime.fromisoformat(reread["run_at"]) == instant


async def test_an_idempotency_key_reused_for_a_different_body_is_409(api: Api) -> None:
    tenant = await api.tenant()
    first = {"type": "text.language", "input": {"text": "one"}, "idempotency_key": "k"}
    async with api.client(tenant.key) as http:
        original = await http.post("/v1/tasks", json=first)
        replay = await http.post("/v1/tasks", json=first)
        other_input = await http.post("/v1/tasks", json={**first, "input": {"text": "two"}})
        other_priority = await http.post("/v1/tasks", json={**first, "priority": 5})
    assert original.status_code == replay.status_code == 202
    assert replay.json()["id"] == original.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    for conflict, field in ((other_input, "input"), (other_priority, "priority")):
        assert conflict.status_code == 409, conflict.text
        assert conflict.headers["content-type"] == "application/problem+json"
        assert conflict.json()["fields"] == [field]
        assert conflict.json()["task_id"] == original.json()["id"]


async def test_out_of_range_parameters_are_4xx_not_500(api: Api) -> None:
    tenant = await api.tenant()
    async with api.client(tenant.key) as http:
        doc = (await http.post("/v1/documents", json={"body": "x"})).json()
        hook = (await http.post("/v1/webhooks", json={"url": "https://example.com/h"})).json()
        answers = {
            "events after 2^63": await http.get("/v1/events", params={"after": 2**63}),
            "deliveries cursor over 2^63": await http.get(
                f"/v1/webhooks/{hook['id']}/deliveries", params={"cursor": str(2**64)}
            ),
            "deliveries cursor ²": await http.get(
                f"/v1/webhooks/{hook['id']}/deliveries", params={"cursor": "²"}
            ),
            "PATCH If-Match ²": await http.patch(
                f"/v1/documents/{doc['id']}", json={"title": "t"}, headers={"If-Match": b'"\xb2"'}
            ),
            "DELETE If-Match ²": await http.delete(
                f"/v1/documents/{doc['id']}", headers={"If-Match": b"\xb2"}
            ),
            "created_after before year 1 in UTC": await http.get(
                "/v1/search", params={"q": "x", "created_after": "0001-01-01T00:00:00+05:00"}
            ),
            "created_before after year 9999 in UTC": await http.get(
                "/v1/search", params={"q": "x", "created_before": "9999-12-31T23:59:59-05:00"}
            ),
            "NUL in a path parameter": await http.get("/v1/documents/%00"),
            "NUL in a query parameter": await http.get("/v1/documents", params={"tag": "\x00"}),
        }
        still = await http.get(f"/v1/documents/{doc['id']}")
    statuses = {name: a.status_code for name, a in answers.items()}
    assert all(s < 500 for s in statuses.values()), str(statuses)
    # NUL never matches a row: SQLite answers 404/200, PostgreSQL refuses the value (422).
    refused = {k: v for k, v in statuses.items() if not k.startswith("NUL")}
    assert set(refused.values()) == {422}, str(statuses)
    problems = [a for a in answers.values() if a.status_code >= 400]
    assert all(a.headers["content-type"] == "application/problem+json" for a in problems)
    assert still.json()["version"] == 1
