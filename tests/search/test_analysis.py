"""The analysis pipeline: what it makes of text, and that every engine keeps exactly its tokens
(Elasticsearch's whitespace analyzer, PostgreSQL's `simple` parser, SQLite's unicode61)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from capstan.db.engine import create_engine
from capstan.search.analysis import analyze, analyzed_text, search_columns
from capstan.search.query import parse, required
from tests.conftest import service_url

SAMPLE = (
    "Files module.function_name Café getHTTPServer naïve ﬁle __init__ sha256 e.g. 3.14 "
    "Ünïcödé ДОКУМЕНТЫ straße x² don't re-use formatted serializers 東京タワー"
)


def test_folding_splitting_and_stemming() -> None:
    assert analyze("Files FORMATTED serializing") == ["file", "format", "serial"]
    assert analyze("Café naïve Straße") == ["cafe", "naiv", "strass"]
    # Parts in place, the whole identifier after the field's other terms.
    assert analyze("call json_tools.parseDocument now") == [
        "call",
        "json",
        "tool",
        "pars",
        "document",
        "now",
        "jsontoolsparsedocu",
    ]
    assert analyze("getHTTPServer") == ["get", "http", "server", "gethttpserv"]
    assert analyze("end of sentence. Next") == ["end", "of", "sentenc", "next"]


def test_search_columns_analyze_title_tags_and_body() -> None:
    cols = search_columns("Moon Landing", "The astronauts landed.", ["space-history", "NASA"])
    assert cols == {
        "terms_title": "moon land",
        "terms_tags": "space histori nasa",
        "terms_body": "the astronaut land",
        "terms_norm": 0.3582,  # 1 / (1 + ln(1 + 5 terms))
    }


def test_query_parsing() -> None:
    q = parse('serialize "red planet" -cheese -"made of" json_tools.parseDocument')
    assert [t.text for t in q.terms] == ["serial", "json tool pars document"]
    assert q.terms[1].whole == "jsontoolsparsedocu"
    assert q.phrases == (("red", "planet"),)
    assert q.excluded == (("chees",), ("made", "of"))
    assert [required(n) for n in range(1, 10)] == [1, 1, 2, 3, 4, 5, 6, 6, 7]


def _positions(pairs: list[tuple[str, int]]) -> list[str]:
    return [term for term, _ in sorted(pairs, key=lambda p: p[1])]


def test_sqlite_fts5_keeps_the_tokens(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "t.db")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='unicode61')")
    db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
    db.execute("INSERT INTO t (x) VALUES (?)", (analyzed_text(SAMPLE),))
    rows = db.execute("SELECT term, offset FROM v").fetchall()
    assert _positions(rows) == analyze(SAMPLE)


@pytest.mark.postgres
async def test_postgres_simple_parser_keeps_the_tokens() -> None:
    engine = create_engine(service_url("postgres"), pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT lexeme, unnest(positions) FROM unnest(to_tsvector('simple', :t))"),
                    {"t": analyzed_text(SAMPLE)},
                )
            ).all()
    finally:
        await engine.dispose()
    assert _positions([(r[0], r[1]) for r in rows]) == analyze(SAMPLE)


@pytest.mark.elasticsearch
async def test_elasticsearch_whitespace_analyzer_keeps_the_tokens() -> None:
    from elasticsearch import AsyncElasticsearch

    client = AsyncElasticsearch(service_url("elasticsearch"))
    try:
        found = await client.indices.analyze(analyzer="whitespace", text=analyzed_text(SAMPLE))
    finally:
        await client.close()
    assert [t["token"] for t in found["tokens"]] == analyze(SAMPLE)
