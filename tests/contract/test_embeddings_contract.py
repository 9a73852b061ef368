"""One contract for the embedding port, run against the offline model and against the
OpenAI-compatible adapter talking to a real local server (tests/embeddings/server.py)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator

import pytest

from capstan.embeddings.openai_compat import OpenAICompatibleEmbedder
from capstan.embeddings.port import Embedder, EmbeddingInputError, Vector
from capstan.embeddings.static import StaticEmbedder
from tests.embeddings.server import EmbeddingsServer

# (text, a paraphrase sharing few words with it, an unrelated text)
PARAPHRASES = [
    (
        "How do I reset my password?",
        "I forgot my login credentials and need to change them.",
        "The train to the coast leaves at seven in the morning.",
    ),
    (
        "The stock market fell sharply today.",
        "Shares plunged on Wall Street this afternoon.",
        "She baked a chocolate cake for her daughter's birthday.",
    ),
    (
        "The physician prescribed antibiotics for the infection.",
        "The doctor gave the patient medicine to treat the bacteria.",
        "Our team won the football match in the final minute.",
    ),
    (
        "Heavy rain is expected across the region tomorrow.",
        "Forecasters predict a storm with downpours over the area next day.",
        "The compiler reports a type error on line twelve.",
    ),
    (
        "The car would not start this morning.",
        "My automobile's engine failed to turn over today.",
        "The museum exhibits paintings from the Renaissance.",
    ),
]

UNICODE = [
    "naïve café, résumé, Straße",
    "日本語のテキストを埋め込みます。",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "emoji 🙂🚀 and a zero\u200bwidth space",
    "\u0000 control \u0007 characters \t tab",
]


@pytest.fixture(scope="module")
def offline_model() -> StaticEmbedder:
    return StaticEmbedder.load()


@pytest.fixture(scope="module")
def local_server(offline_model: StaticEmbedder) -> Iterator[EmbeddingsServer]:
    s = EmbeddingsServer(offline_model)
    s.start()
    yield s
    s.stop()


@pytest.fixture(params=["offline", "openai-compatible"])
async def embedder(request: pytest.FixtureRequest) -> AsyncIterator[Embedder]:
    if request.param == "offline":
        yield request.getfixturevalue("offline_model")
        return
    server: EmbeddingsServer = request.getfixturevalue("local_server")
    # A small batch size, so that the batching tests cross request boundaries.
    adapter = await OpenAICompatibleEmbedder.connect(
        server.url, server.model, batch_size=8, retry_base_seconds=0.01
    )
    yield adapter
    await adapter.aclose()


def cosine(a: Vector, b: Vector) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def assert_unit(v: Vector, dimension: int) -> None:
    assert len(v) == dimension
    assert all(math.isfinite(x) for x in v)
    assert math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4)


async def test_it_names_its_model_version_and_dimension(embedder: Embedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.model and embedder.version
    assert embedder.dimension == 256  # both serve the offline model here


async def test_every_vector_has_the_dimension_and_unit_length(embedder: Embedder) -> None:
    vectors = await embedder.embed(["one", "a somewhat longer sentence about nothing much"])
    assert len(vectors) == 2
    for v in vectors:
        assert_unit(v, embedder.dimension)


async def test_the_same_text_gives_the_same_vector_alone_or_in_any_batch(
    embedder: Embedder,
) -> None:
    texts = [f"document number {i} talks about topic {i % 7}" for i in range(20)]
    first = await embedder.embed(texts)
    again = await embedder.embed(texts)
    assert first == again
    alone = await embedder.embed([texts[13]])
    assert alone[0] == pytest.approx(first[13], abs=1e-6)
    reordered = await embedder.embed(texts[::-1])
    for v, w in zip(reordered[::-1], first, strict=True):
        assert v == pytest.approx(w, abs=1e-6)


async def test_many_texts_come_back_in_order_whatever_the_batches(embedder: Embedder) -> None:
    texts = [f"sentence {i}: " + "word " * (i % 11) + f"end {i}" for i in range(150)]
    vectors = await embedder.embed(texts)
    assert len(vectors) == 150
    for i in (0, 7, 8, 63, 64, 149):
        (single,) = await embedder.embed([texts[i]])
        assert vectors[i] == pytest.approx(single, abs=1e-6)


async def test_no_texts_give_no_vectors_and_blank_texts_are_refused(embedder: Embedder) -> None:
    assert await embedder.embed([]) == []
    for bad in ([""], ["fine", "   \n\t"]):
        with pytest.raises(EmbeddingInputError, match="empty or blank"):
            await embedder.embed(bad)
    with pytest.raises(EmbeddingInputError, match="not one string"):
        await embedder.embed("a string is not a list of texts")


async def test_unicode_texts_embed_to_distinct_unit_vectors(embedder: Embedder) -> None:
    vectors = await embedder.embed(UNICODE)
    for v in vectors:
        assert_unit(v, embedder.dimension)
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            assert cosine(vectors[i], vectors[j]) < 0.999, (UNICODE[i], UNICODE[j])


@pytest.mark.parametrize(("text", "paraphrase", "unrelated"), PARAPHRASES)
async def test_a_paraphrase_is_closer_than_an_unrelated_text(
    embedder: Embedder, text: str, paraphrase: str, unrelated: str
) -> None:
    v, p, u = await embedder.embed([text, paraphrase, unrelated])
    assert cosine(v, p) > cosine(v, u) + 0.05, (cosine(v, p), cosine(v, u))
