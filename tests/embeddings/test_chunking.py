"""The chunker's guarantees (capstan.embeddings.chunking's docstring) on generated texts."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.embeddings.chunking import (
    Chunk,
    Measure,
    chunk_text,
    sentence_spans,
    token_counter,
)

WORD = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzé日本ÄΩ0123456789-'"),
    min_size=1,
    max_size=14,
)
SPACE = st.sampled_from([" ", " ", " ", "  ", "\n", "\n\n", "\t", " \n ", " " * 120])
END = st.sampled_from([".", "!", "?", "…", '."', "?)", "。", ""])


@st.composite
def documents(draw: st.DrawFn) -> str:
    """Sentences of words, some very long (one word can outgrow a chunk), odd whitespace."""
    sentences = []
    for _ in range(draw(st.integers(0, 25))):
        words = draw(st.lists(WORD, min_size=1, max_size=30))
        if draw(st.integers(0, 20)) == 0:
            words.append("w" * draw(st.integers(50, 400)))
        sentence = draw(SPACE).join(words) + draw(END)
        sentences.append(sentence)
    text = "".join(s + draw(SPACE) for s in sentences)
    return draw(SPACE) + text if draw(st.booleans()) else text


def check(text: str, chunks: list[Chunk], size: int, overlap: int, measure: Measure) -> None:
    if not text.strip():
        assert chunks == []
        return
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for i, c in enumerate(chunks):
        assert c.index == i
        assert c.text == text[c.start : c.end] and c.text.strip()
        if measure(c.text) > size:  # only a word that alone outgrows a chunk
            assert len(c.text.split()) == 1, c
    for a, b in itertools.pairwise(chunks):
        assert a.start < b.start <= a.end < b.end  # no gap, always moving on
        assert measure(text[b.start : a.end]) <= overlap


@settings(max_examples=300, deadline=None)
@given(text=documents(), size=st.integers(8, 400), data=st.data())
def test_chunks_cover_the_text_within_size_and_overlap(
    text: str, size: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    chunks = chunk_text(text, size=size, overlap=overlap)
    check(text, chunks, size, overlap, len)
    assert chunk_text(text, size=size, overlap=overlap) == chunks  # deterministic


@settings(max_examples=150, deadline=None)
@given(text=documents(), size=st.integers(40, 400))
def test_when_every_sentence_fits_chunks_break_only_between_sentences(text: str, size: int) -> None:
    spans = sentence_spans(text)
    if any(end - start > size for start, end in spans):
        return
    bounds = {start for start, _ in spans} | {len(text)}
    for c in chunk_text(text, size=size, overlap=size // 4):
        assert c.start in bounds and c.end in bounds


@settings(max_examples=150, deadline=None)
@given(text=documents())
def test_sentence_spans_tile_the_text(text: str) -> None:
    spans = sentence_spans(text)
    if not text:
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, a_end), (b_start, _) in itertools.pairwise(spans):
        assert a_end == b_start
    if text.strip():
        assert all(text[s:e].strip() for s, e in spans)


_COUNT = token_counter()


@settings(max_examples=60, deadline=None)
@given(text=documents(), size=st.integers(16, 200), data=st.data())
def test_token_sized_chunks_keep_the_same_guarantees(
    text: str, size: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, size // 2))
    chunks = chunk_text(text, size=size, overlap=overlap, measure=_COUNT)
    check(text, chunks, size, overlap, _COUNT)


def test_a_plain_example_reads_as_expected() -> None:
    text = "One two three. Four five six! Seven eight nine? Ten."
    chunks = chunk_text(text, size=35, overlap=18)
    assert [c.text for c in chunks] == [
        "One two three. Four five six! ",
        "Four five six! Seven eight nine? ",  # repeats the last sentence that fits in 18
        "Seven eight nine? Ten.",
    ]


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_impossible_sizes_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="chunk"):
        chunk_text("Some text.", size=size, overlap=overlap)
