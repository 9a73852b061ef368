"""What a search text means, the same for every engine.

- words: each word is one term; an identifier (`json.dumps`, `parseDocument`) is the phrase of
  its parts, so it matches wherever those parts stand together, and an identifier typed as one
  lower-case word (`parsedocument`) matches the whole form the index keeps;
- `"quoted phrase"`: its terms in that order, required;
- `-word`, `-"a phrase"`: documents containing it are excluded;
- minimum should match: with `n` terms a document must match `required(n)` of them, that is all
  of them up to 1 term, then all but one, and all but a quarter (rounded down) from 8 terms on;
- typo tolerance (optional): a word of `TYPO_MIN_CHARS` or more letters also matches the terms
  of every word one edit away from it (insertion, deletion, substitution, transposition, then
  stemmed: `curiosty` finds "curiosity"), scored below an exact match.

Ranking, the same number in every engine: documents are ordered by how many terms they match
(an exact match counts 2, a typo match 1), so every all-terms match comes first, then by

    relevance = norm(document) * sum over matched terms of idf(term) * field weight

where the field weight is that of the best field the term is in (title 3, tags 2, body 1), idf
is Lucene's `ln(1 + (N - df + 0.5) / (df + 0.5))` over the tenant's documents, and norm is
`1 / (1 + ln(1 + terms in title and body))`. The score reported is `TIER * count + relevance`.
(No engine's own BM25: term frequencies and field statistics differ between engines, and
ranking must not depend on which one answers.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from capstan.search.analysis import stem, tokens

MAX_TERMS = 32
TYPO_MIN_CHARS = 5
# Per matched-term unit; relevance never reaches it (BM25 over 3 fields and <= 32 terms).
TIER = 1000.0
FIELD_WEIGHTS = {"title": 3.0, "tags": 2.0, "body": 1.0}
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PART = re.compile(r'(-?)"([^"]*)"?|(-?)(\S+)')

Rule = Literal["all", "typo", "most"]


@dataclass(frozen=True, slots=True)
class Term:
    # One analyzed word, or the parts of an identifier (matched as a phrase).
    words: tuple[str, ...]
    # Indexed forms at one edit (typo tolerance on, one-word terms), never the term itself.
    variants: tuple[str, ...] = ()
    # An identifier's whole form, which also matches it exactly.
    whole: str | None = None

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def forms(self) -> tuple[str, ...]:
        """What matches the term exactly: its words (a phrase when several), its whole form."""
        return (self.text,) if self.whole is None else (self.text, self.whole)


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    terms: tuple[Term, ...]
    phrases: tuple[tuple[str, ...], ...]
    excluded: tuple[tuple[str, ...], ...]
    required: int  # how many of `terms` a document must match

    @property
    def empty(self) -> bool:
        """Nothing positive to match: such a query finds no document."""
        return not self.terms and not self.phrases

    def words(self) -> list[str]:
        """Every positive term (terms and phrase terms) for relevance and highlighting."""
        out = [w for t in self.terms for w in t.words]
        for phrase in self.phrases:
            out.extend(phrase)
        return list(dict.fromkeys(out))

    def ranked(self) -> list[tuple[str, ...]]:
        """What relevance sums over, each as the forms that match it: every term, and every
        word of the phrases."""
        out = [t.forms for t in self.terms]
        out += [(w,) for phrase in self.phrases for w in phrase]
        return list(dict.fromkeys(out))

    def rule(self, exact: int, matched: int) -> Rule:
        """Which rule let a document in, from its exact and its any-way matched term counts."""
        n = len(self.terms)
        if exact == n:
            return "all"
        return "typo" if matched == n else "most"

    def describe(self) -> dict[str, object]:
        return {
            "terms": [t.text for t in self.terms],
            "phrases": [" ".join(p) for p in self.phrases],
            "excluded": [" ".join(p) for p in self.excluded],
            "min_should_match": self.required,
            "typos": any(t.variants for t in self.terms),
        }


def idf(documents: int, df: int) -> float:
    """Lucene's BM25 idf, to 4 decimals so that every engine multiplies the same numbers."""
    return round(math.log(1 + (documents - df + 0.5) / (df + 0.5)), 4)


def required(n: int) -> int:
    """The minimum-should-match rule (see the module docstring)."""
    if n <= 1:
        return n
    return n - max(1, n // 4)


def edits(word: str) -> set[str]:
    """Every string one edit from `word` over a-z (Norvig's enumeration), without `word`."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    out = {a + b[1:] for a, b in splits if b}
    out |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    out |= {a + c + b[1:] for a, b in splits if b for c in LETTERS}
    out |= {a + c + b for a, b in splits for c in LETTERS}
    out.discard(word)
    return out


def variants(term: str, word: str) -> tuple[str, ...]:
    """The terms of the words one edit from `word` (whose term is `term`), without `term`."""
    if len(word) < TYPO_MIN_CHARS or not word.isalpha():
        return ()
    return tuple(sorted({stem(w) for w in edits(word)} - {term}))


def parse(text: str, *, typos: bool = False) -> ParsedQuery:
    """The query a search text stands for."""
    terms: dict[tuple[str, ...], str] = {}  # term → the word typed (for typo variants)
    wholes: dict[tuple[str, ...], str] = {}  # identifier term → its whole form
    phrases: list[tuple[str, ...]] = []
    excluded: list[tuple[str, ...]] = []
    for m in PART.finditer(text):
        quoted, negative = m.group(2), m.group(1)
        if quoted is None:
            quoted, negative = m.group(4), m.group(3)
        found = list(tokens(quoted))
        parts = [t for t in found if not t.whole]
        groups: list[tuple[str, ...]]
        if m.group(2) is not None:
            groups = [tuple(t.term for t in parts)] if parts else []
            typed = {groups[0]: parts[0].word} if len(parts) == 1 else {}
        else:
            # A word is one term per identifier (its parts, together), so `foo-bar` is two.
            spans: dict[tuple[int, int], list[str]] = {}
            for t in parts:
                spans.setdefault((t.start, t.end), []).append(t.term)
            groups = [tuple(g) for g in spans.values()]
            typed = {(t.term,): t.word for t in parts}
            for t in found:
                if t.whole:
                    wholes[tuple(spans[(t.start, t.end)])] = t.term
        for group in groups:
            if negative:
                excluded.append(group)
            elif m.group(2) is not None and len(group) > 1:
                phrases.append(group)
            else:
                terms.setdefault(group, typed.get(group, ""))
    chosen = list(terms.items())[:MAX_TERMS]
    built = tuple(
        Term(
            words,
            variants(words[0], word) if typos and len(words) == 1 else (),
            wholes.get(words),
        )
        for words, word in chosen
    )
    return ParsedQuery(
        built,
        tuple(dict.fromkeys(phrases)),
        tuple(dict.fromkeys(excluded)),
        required(len(built)),
    )
