"""One contract for the search port, run against Elasticsearch, PostgreSQL FTS and SQLite FTS5
on the same corpus with the same expected answers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from capstan.db.engine import create_engine, sessionmaker
from capstan.db.migrate import upgrade
from capstan.search.port import Filters, SearchQuery
from tests.conftest import service_url
from tests.search.corpus import T0, Harness, make_doc


@pytest.fixture(
    params=[
        "sqlite-fts5",
        pytest.param("postgres-fts", marks=pytest.mark.postgres),
        pytest.param("elasticsearch", marks=pytest.mark.elasticsearch),
    ]
)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    if request.param == "elasticsearch":
        from capstan.search.elasticsearch import ElasticsearchEngine

        es = ElasticsearchEngine(
            service_url("elasticsearch"), alias=f"test-contract-{uuid.uuid4().hex[:10]}"
        )
        h = Harness(es, None)
        await h.setup()
        yield h
        await es.client.indices.delete(index=f"{es.alias}-*", ignore_unavailable=True)
        await es.close()
        return
    if request.param == "sqlite-fts5":
        from capstan.search.sqlite_fts import SqliteFts

        url = f"sqlite:///{tmp_path / 'search.db'}"
        await upgrade(url)
        engine = create_engine(url)
        h = Harness(SqliteFts(engine), sessionmaker(engine))
    else:
        from capstan.search.postgres_fts import PostgresFts

        url = request.getfixturevalue("postgres_url")
        engine = create_engine(url)
        h = Harness(PostgresFts(engine), sessionmaker(engine))
    await h.setup()
    yield h
    await engine.dispose()


async def test_all_term_matches_rank_first_and_title_matches_outrank_body(
    harness: Harness,
) -> None:
    assert set(await harness.keys("moon")) == {"apollo", "cheese", "soil"}
    # Two terms: one is enough (minimum should match), but the document with both comes first.
    result = await harness.ask("moon cheese")
    assert harness.name_of(result.hits[0].id) == "cheese"
    assert [h.match for h in result.hits] == ["all", "most", "most"]
    assert {harness.name_of(h.id) for h in result.hits[1:]} == {"apollo", "soil"}
    assert await harness.keys("MARS") == ["mars"]
    assert await harness.keys("nothing-matches-this") == []
    result = await harness.ask("moon")
    assert result.total == 3
    assert all(h.score is not None and h.score > 0 for h in result.hits)
    scores = [h.score or 0 for h in result.hits]
    assert scores == sorted(scores, reverse=True)


async def test_highlights_mark_the_matches(harness: Harness) -> None:
    result = await harness.ask("cheese")
    (hit,) = result.hits
    assert hit.title == "Moon cheese"
    assert hit.version == 1
    assert any("<em>cheese</em>" in frag.lower() for frag in hit.highlights), hit.highlights


async def test_structured_filters(harness: Harness) -> None:
    ask = harness.keys
    assert set(await ask("moon", filters=Filters(collection="space"))) == {"apollo", "soil"}
    assert await ask("moon", filters=Filters(tags=("nasa", "howto"))) == ["soil"]
    assert set(await ask("moon", filters=Filters(tags=("humor", "howto"), tags_mode="any"))) == {
        "cheese",
        "soil",
    }
    assert await ask("moon", filters=Filters(metadata=(("lang", "fr"),))) == ["cheese"]
    assert await ask(None, filters=Filters(metadata=(("year", "1969"),))) == ["apollo"]
    assert await ask(None, filters=Filters(metadata=(("verified", "false"),))) == ["cheese"]
    after = Filters(created_after=T0.replace(month=2, day=15))
    assert set(await ask("moon", filters=after)) == {"cheese", "soil"}
    before = Filters(created_before=T0.replace(month=2, day=15))
    assert set(await ask(None, filters=before)) == {"apollo", "mars"}


async def test_structured_queries_sort_by_the_chosen_field(harness: Harness) -> None:
    space = Filters(collection="space")
    assert await harness.keys(None, filters=space, sort="created") == ["soil", "mars", "apollo"]
    assert await harness.keys(None, filters=space) == ["soil", "mars", "apollo"]
    assert await harness.keys("moon", sort="created") == ["soil", "cheese", "apollo"]


@pytest.mark.parametrize("text", ["moon", None])
async def test_pagination_visits_every_hit_once(harness: Harness, text: str | None) -> None:
    seen: list[str] = []
    after = None
    for _ in range(10):
        result = await harness.ask(text, limit=2, after=after)
        seen += [harness.name_of(h.id) for h in result.hits]
        if not result.more:
            break
        after = result.hits[-1].key
    expected = {"apollo", "cheese", "soil"} if text else set(harness.docs) - {"foreign"}
    assert sorted(seen) == sorted(expected)
    everything = await harness.keys(text, limit=50)
    assert seen == everything
    # By position (a cursor from another engine falls back to this).
    assert await harness.keys(text, limit=2, offset=2) == everything[2:4]


async def test_later_pages_rank_with_the_first_pages_weights(harness: Harness) -> None:
    """Documents written between two pages change every idf, so every score: a later page that
    re-weighed would compare its scores with the first page's key, and skip or repeat hits."""
    first = await harness.ask("moon", limit=2)
    assert len(first.weights) == 1 and first.more
    for i in range(3):
        key = f"late{i}"
        harness.docs[key] = make_doc(harness.tenant, (f"Moon note {i}", "moon", "x", [], {}, 8))
        await harness.put(harness.docs[key])
    seen = [harness.name_of(h.id) for h in first.hits]
    after = first.hits[-1].key
    for _ in range(10):
        page = await harness.ask("moon", limit=2, after=after, weights=first.weights)
        seen += [harness.name_of(h.id) for h in page.hits]
        if not page.more:
            break
        after = page.hits[-1].key
    assert len(seen) == len(set(seen)), seen
    assert {"apollo", "cheese", "soil"} <= set(seen), seen


async def test_facets_count_every_match(harness: Harness) -> None:
    result = await harness.ask("moon")
    assert result.facets["collections"] == {"space": 2, "folklore": 1}
    assert result.facets["tags"] == {"nasa": 2, "history": 1, "humor": 1, "howto": 1}


async def test_tenant_isolation(harness: Harness) -> None:
    result = await harness.ask("moon", limit=50)
    assert "foreign" not in {harness.name_of(h.id) for h in result.hits}
    assert "secret" not in result.facets["collections"]
    assert result.facets["tags"]["nasa"] == 2
    other = await harness.engine.query(SearchQuery(tenant_id=harness.other, text="moon"))
    assert [h.id for h in other.hits] == [harness.docs["foreign"].id]


async def test_updates_win_and_stale_versions_are_refused(harness: Harness) -> None:
    newer = harness.bumped("mars", title="Mars rover two", body="Perseverance on Mars")
    await harness.put(newer)
    assert await harness.keys("perseverance") == ["mars"]
    (hit,) = (await harness.ask("perseverance")).hits
    assert (hit.title, hit.version) == ("Mars rover two", 2)
    report = await harness.put(harness.docs["mars"])  # version 1 again: stale
    if harness.engine.derived:
        assert report.stale == 1 and report.applied == 0
    assert await harness.keys("perseverance") == ["mars"]
    assert await harness.keys("curiosity") == []


async def test_deleted_documents_stay_deleted(harness: Harness) -> None:
    apollo = harness.docs["apollo"]
    await harness.remove(apollo)
    assert set(await harness.keys("moon")) == {"cheese", "soil"}
    # A late or replayed write of the old version cannot bring it back.
    report = await harness.put(apollo)
    if harness.engine.derived:
        assert report.stale == 1
        await harness.remove(apollo)  # deleting twice is fine
    assert set(await harness.keys("moon")) == {"cheese", "soil"}


async def test_inflected_words_match_through_stemming(harness: Harness) -> None:
    assert await harness.keys("files") == ["code"]
    assert await harness.keys("formatting serializers") == ["code"]
    assert (await harness.ask("formatting serializers")).hits[0].match == "all"
    # "landings" and "moons": the document that says "landing"/"landed" and "moon".
    assert (await harness.keys("landings moons"))[0] == "apollo"


async def test_case_and_accents_fold(harness: Harness) -> None:
    assert await harness.keys("CAFE") == ["code"]
    assert await harness.keys("café") == ["code"]


async def test_identifiers_match_whole_and_by_their_parts(harness: Harness) -> None:
    for typed in ("parseDocument", "parse_document", "json_tools.parseDocument"):
        assert await harness.keys(typed) == ["code"], typed
    assert await harness.keys("json_tools.parsedocument") == ["code"]
    # The whole identifier typed as one lower-case word.
    assert await harness.keys("jsontoolsparsedocument") == ["code"]
    # Parts that do not stand together in the text are not the identifier.
    assert await harness.keys("documentParse") == []


async def test_phrases_need_their_words_in_order(harness: Harness) -> None:
    assert await harness.keys('"red planet"') == ["mars"]
    assert await harness.keys('"planet red"') == []
    assert await harness.keys('"apollo program" moon') == ["apollo"]


async def test_excluded_terms_remove_documents(harness: Harness) -> None:
    assert set(await harness.keys("moon -cheese")) == {"apollo", "soil"}
    assert set(await harness.keys('moon -"made of cheese"')) == {"apollo", "soil"}
    assert await harness.keys("-moon") == []  # nothing positive: nothing found


async def test_minimum_should_match_keeps_most_terms_and_says_which_rule(
    harness: Harness,
) -> None:
    # Three terms: two are needed. "rover" + "mars" match, "bicycle" is in no document.
    result = await harness.ask("mars rover bicycle")
    assert [harness.name_of(h.id) for h in result.hits] == ["mars"]
    assert result.hits[0].match == "most"
    # One of three is not enough.
    assert await harness.keys("mars bicycle unicycle") == []


async def test_title_and_tag_matches_outrank_body_matches(harness: Harness) -> None:
    # "gardening" is the title of "garden" and in the body of "soil".
    assert await harness.keys("gardening") == ["garden", "soil"]
    # "history" is a tag of "apollo" only; "robots" a tag of "mars".
    assert await harness.keys("robots") == ["mars"]


async def test_typo_tolerance_is_an_option_and_ranks_below_exact(harness: Harness) -> None:
    assert await harness.keys("perserverance curiosty") == []
    result = await harness.ask("curiosty", typos=True)
    assert [(harness.name_of(h.id), h.match) for h in result.hits] == [("mars", "typo")]
    # Short words are not fuzzed: "mars" is not "bars".
    assert await harness.keys("bars", typos=True) == []
    exact_first = await harness.ask("rover rovers", typos=True)
    assert exact_first.hits[0].match == "all"
