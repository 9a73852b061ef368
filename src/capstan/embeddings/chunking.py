"""Cut a document into the chunks that get embedded: whole sentences, at most `size` units
(characters, or tokens), consecutive chunks sharing at most `overlap` units of whole sentences.

Guarantees (tests/embeddings/test_chunking.py checks them on generated texts):
- the chunks cover the text: the first starts at 0, the last ends at `len(text)`, and each
  starts at or before the end of the one before it (no character is left out);
- `chunk.text == text[chunk.start:chunk.end]`, and no chunk is blank;
- the text shared by two consecutive chunks measures at most `overlap`, and each chunk starts
  and ends later than the one before it;
- a chunk measures at most `size`, unless it is one word (with the whitespace around it) longer
  than `size` on its own; sentences longer than `size` are cut between words;
- chunk boundaries fall between sentences, unless a sentence had to be cut;
- the same text and settings always give the same chunks.

Sentences end at . ! ? … (and closing quotes or brackets) followed by whitespace, at the CJK
full stop, exclamation and question marks, and at line breaks. It is a rule, not a model:
"e.g. this" ends a sentence after "e.g.", which costs nothing but a slightly earlier cut.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

Measure = Callable[[str], int]
Unit = Literal["chars", "tokens"]

# . ! ? … with closing quotes or brackets, then whitespace; CJK full stop, ! and ?; line breaks.
_SENTENCE_END = re.compile(
    r"""[.!?\u2026]+["'\u201d\u2019\u00bb)\]]*\s+|[\u3002\uff01\uff1f]+\s*|\n\s*"""
)
_WORD = re.compile(r"\s*\S+\s*")


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    start: int  # offsets into the original text: text[start:end] == self.text
    end: int
    text: str


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence, tiling the text; whitespace goes with the sentence
    before it (leading whitespace with the first); no span is blank unless the text is."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        cut = match.end()
        if cut >= len(text):
            break
        if text[start:cut].strip():
            spans.append((start, cut))
            start = cut
    if start < len(text):
        if spans and not text[start:].strip():
            spans[-1] = (spans[-1][0], len(text))
        else:
            spans.append((start, len(text)))
    return spans


def chunk_text(text: str, *, size: int, overlap: int = 0, measure: Measure = len) -> list[Chunk]:
    """The chunks of `text` (none for a blank text); see the module docstring."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1 (got {size})")
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap must be at least 0 and below the size {size} ({overlap})")
    if not text.strip():
        return []
    pieces = list(_pieces(text, size, measure))

    def span_measure(first: int, last: int) -> int:
        return measure(text[pieces[first][0] : pieces[last][1]])

    chunks: list[Chunk] = []
    first = nxt = 0  # the chunk's first piece; the first piece no chunk has yet
    while nxt < len(pieces):
        # Overlap that leaves no room for a new piece is dropped, oldest sentence first.
        while first < nxt and span_measure(first, nxt) > size:
            first += 1
        end = nxt + 1
        while end < len(pieces) and span_measure(first, end) <= size:
            end += 1
        start_at, end_at = pieces[first][0], pieces[end - 1][1]
        chunks.append(Chunk(len(chunks), start_at, end_at, text[start_at:end_at]))
        nxt = end
        # The next chunk repeats the longest run of this one's last pieces within `overlap`,
        # never all of them (each chunk must start later than the one before).
        back = end
        while back - 1 > first and span_measure(back - 1, end - 1) <= overlap:
            back -= 1
        first = back
    return chunks


def _pieces(text: str, size: int, measure: Measure) -> Iterator[tuple[int, int]]:
    """Sentences; a sentence over `size` cut between words; a word over `size` cut where it
    fits (its trailing whitespace stays with its last part)."""
    for s_start, s_end in sentence_spans(text):
        if measure(text[s_start:s_end]) <= size:
            yield s_start, s_end
            continue
        for word in _WORD.finditer(text, s_start, s_end):
            yield from _cut_word(text, *word.span(), size, measure)


def _cut_word(
    text: str, start: int, end: int, size: int, measure: Measure
) -> Iterator[tuple[int, int]]:
    while measure(text[start:end]) > size:
        cut = _longest_prefix(text, start, end, size, measure)
        if not text[start:cut].strip():
            # Whitespace alone fills the size: it goes with as much of the word as fits alone.
            word_start = end - len(text[start:end].lstrip())
            cut = _longest_prefix(text, word_start, end, size, measure)
        if not text[cut:end].strip():  # only whitespace would be left: keep it with the word
            break
        yield start, cut
        start = cut
    yield start, end


def _longest_prefix(text: str, start: int, end: int, size: int, measure: Measure) -> int:
    """The end of the longest prefix of text[start:end] within `size` (one character at
    least, so the cut always moves on)."""
    lo, hi = start + 1, end - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(text[start:mid]) <= size:
            lo = mid
        else:
            hi = mid - 1
    return lo


def token_counter() -> Measure:
    """Counts tokens with the offline model's tokenizer (unit="tokens")."""
    from tokenizers import Tokenizer

    from capstan.embeddings.static import TOKENIZER, package_dir

    tokenizer = Tokenizer.from_file(str(package_dir() / TOKENIZER))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


def measure_for(unit: Unit) -> Measure:
    return len if unit == "chars" else token_counter()
