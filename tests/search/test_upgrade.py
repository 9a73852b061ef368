"""Upgrading an Elasticsearch index made before the analysis: writes keep working at once, text
queries are refused (so the service answers from the database) until a reindex builds an index
with the analysis, and then they are answered from it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from capstan.search.elasticsearch import TERMS_FIELDS, ElasticsearchEngine
from capstan.search.port import IndexDoc, SearchQuery, SearchUnavailable
from tests.conftest import service_url

pytestmark = pytest.mark.elasticsearch

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def doc(title: str, body: str, version: int = 1) -> IndexDoc:
    return IndexDoc(
        id=str(uuid.uuid4()),
        tenant_id="t",
        collection="c",
        title=title,
        body=body,
        tags=(),
        metadata={},
        version=version,
        created_at=NOW,
        updated_at=NOW,
    )


@pytest.fixture
async def engine() -> AsyncIterator[ElasticsearchEngine]:
    es = ElasticsearchEngine(service_url("elasticsearch"), alias=f"test-up-{uuid.uuid4().hex[:8]}")
    yield es
    await es.client.indices.delete(index=f"{es.alias}-*", ignore_unavailable=True)
    await es.close()


async def make_old_index(es: ElasticsearchEngine) -> None:
    """The index as the code before the analysis made it: no terms fields, no `_meta`."""
    body: dict[str, Any] = es.body()
    mappings = body["mappings"]
    del mappings["_meta"]
    for name in (*TERMS_FIELDS, "terms_norm"):
        del mappings["properties"][name]
    await es.client.indices.create(
        index=f"{es.alias}-0",
        settings=body["settings"],
        mappings=mappings,
        aliases={es.alias: {}, es.write_alias: {}},
    )


async def test_an_old_index_takes_writes_and_hands_text_queries_to_the_database(
    engine: ElasticsearchEngine,
) -> None:
    await make_old_index(engine)
    # The indexer's writes carry the new fields: accepted by the old index.
    report = await engine.index([doc("Files", "serialized files")])
    assert report.applied == 1 and not report.failed
    await engine.refresh()
    with pytest.raises(SearchUnavailable, match="reindex"):
        await engine.query(SearchQuery(tenant_id="t", text="file"))
    # Structured queries do not need the analysis.
    assert (await engine.query(SearchQuery(tenant_id="t", text=None))).total == 1

    # What `capstan search reindex` does: a new index (with the analysis), backfilled, swapped.
    old = await engine.read_index()
    new = engine.new_index_name()
    await engine.create_index(new)
    written = doc("Serializer files", "formatted output")
    await engine.index([written], targets=[new])
    await engine.update_aliases(
        [
            {"add": {"index": new, "alias": engine.alias}},
            {"add": {"index": new, "alias": engine.write_alias}},
            {"remove": {"index": old, "alias": engine.alias}},
            {"remove": {"index": old, "alias": engine.write_alias}},
        ]
    )
    await engine.refresh()
    found = await engine.query(SearchQuery(tenant_id="t", text="serializing formats"))
    assert [h.id for h in found.hits] == [written.id]


async def test_reindex_if_stale_rebuilds_an_old_index_once(
    engine: ElasticsearchEngine, postgres_url: str, tmp_path: Path
) -> None:
    """What `scripts/stack up` runs after `capstan migrate`: an index from before the analysis
    is rebuilt (text queries come back to Elasticsearch), a current one is left alone."""
    await make_old_index(engine)
    old = await engine.read_index()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")} | {
        "CAPSTAN_DATA_DIR": str(tmp_path),
        "CAPSTAN_DATABASE_URL": postgres_url,
        "CAPSTAN_SEARCH_URL": service_url("elasticsearch"),
        "CAPSTAN_SEARCH_INDEX": engine.alias,
    }

    def run() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "capstan.cli.main", "search", "reindex", "--if-stale"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    first = await asyncio.to_thread(run)
    assert "skipped" not in first, first
    rebuilt = await engine.read_index()
    assert rebuilt is not None and rebuilt != old
    assert await engine.analyzed()

    second = await asyncio.to_thread(run)
    assert "analysis version" in second["skipped"]
    assert await engine.read_index() == rebuilt
