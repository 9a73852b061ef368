"""The one text analysis every engine uses: Python turns text into terms on the indexing and the
query side, and each engine only stores and matches those terms (Elasticsearch with the
`whitespace` analyzer, PostgreSQL with the `simple` configuration, SQLite FTS5 with
`unicode61`), so all three see the same tokens whatever analysis modules they ship.

Steps, per word (a run of letters, digits and `_`, joined by `.`):

1. fold: Unicode NFKD, combining marks dropped (`Café` → `Cafe`);
2. split identifiers on `.`, `_` and camelCase (`module.functionName` → module, function, Name);
3. lower-case (`casefold`), then the Snowball stemmer of the language (`files` → `file`);
4. an identifier of several parts is also kept whole (`modulefunctionnam`, stemmed like a word),
   after all the other terms of the field, so typing it as one word finds it and phrases over
   the text (and over the identifier's parts) are not broken by it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import snowballstemmer

LANGUAGE = "english"
# Change it whenever the terms change: an Elasticsearch index records the version it was built
# with and answers text queries only when it is this one (docs/search.md, upgrading).
ANALYSIS_VERSION = "1"
# Elasticsearch's whitespace tokenizer cuts tokens at 255 characters and PostgreSQL refuses
# lexemes over 2 KB: longer "words" are dropped everywhere instead of cut differently.
MAX_TERM_CHARS = 100
# The body is analyzed up to here (a tsvector is limited to 1 MB; search needs to find a
# document, not to rank every word of a huge one).
MAX_BODY_CHARS = 100_000

WORD = re.compile(r"\w+(?:\.\w+)*")
SEPARATORS = re.compile(r"[._]+")
CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@dataclass(frozen=True, slots=True)
class Token:
    term: str
    # The whole of a multi-part identifier (phrases skip it).
    whole: bool
    word: str  # the folded, lower-cased word before stemming (typo tolerance edits it)
    start: int  # character offsets in the original text (highlighting)
    end: int


@lru_cache(maxsize=8)
def _stemmer(language: str) -> snowballstemmer.stemmer:
    return snowballstemmer.stemmer(language)


@lru_cache(maxsize=200_000)
def stem(word: str, language: str = LANGUAGE) -> str:
    """The Snowball stem of a lower-cased word."""
    return str(_stemmer(language).stemWord(word))


def fold(text: str) -> str:
    """Accents off, compatibility forms decomposed (`ﬁ` → `fi`); case is kept."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _parts(word: str) -> list[str]:
    return [p for segment in SEPARATORS.split(word) for p in CAMEL.split(segment) if p]


@lru_cache(maxsize=200_000)
def _word_terms(word: str, language: str) -> tuple[tuple[str, bool, str], ...]:
    """(term, whole, folded word) of one word as it appears in text (cached: words repeat)."""
    parts = [p.casefold() for p in _parts(fold(word))]
    out: list[tuple[str, bool, str]] = []
    if len(parts) > 1:
        whole = "".join(parts)
        if len(whole) <= MAX_TERM_CHARS:
            out.append((stem(whole, language), True, whole))
    out += [(stem(p, language), False, p) for p in parts if len(p) <= MAX_TERM_CHARS]
    return tuple(out)


def tokens(text: str, language: str = LANGUAGE) -> Iterator[Token]:
    """Every token of `text`, in order, with the offsets of the word it came from."""
    for match in WORD.finditer(text):
        start, end = match.span()
        for term, whole, word in _word_terms(match.group(), language):
            yield Token(term, whole, word, start, end)


def analyze(text: str, language: str = LANGUAGE) -> list[str]:
    """The terms of `text` in order, whole identifiers last (what every engine indexes)."""
    found = list(tokens(text, language))
    return [t.term for t in found if not t.whole] + [t.term for t in found if t.whole]


def analyzed_text(text: str, language: str = LANGUAGE) -> str:
    """The terms joined by spaces: the form stored in `terms_*` columns and Elasticsearch."""
    return " ".join(analyze(text, language))


def length_norm(terms: int) -> float:
    """The document-length factor of relevance, `1 / (1 + ln(1 + terms))` to 4 decimals (so
    every engine, double or float, multiplies by the same number)."""
    return round(1.0 / (1.0 + math.log1p(terms)), 4)


def search_columns(title: str, body: str, tags: Iterable[str]) -> dict[str, Any]:
    """The analyzed columns of a document row: `terms_title`, `terms_tags`, `terms_body` and
    `terms_norm` (the length factor over the title and body terms)."""
    title_terms = analyze(title)
    body_terms = analyze(body[:MAX_BODY_CHARS])
    return {
        "terms_title": " ".join(title_terms),
        "terms_tags": " ".join(analyzed_text(tag) for tag in tags),
        "terms_body": " ".join(body_terms),
        "terms_norm": length_norm(len(title_terms) + len(body_terms)),
    }
