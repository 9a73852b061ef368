"""What a search text means, the same for every engine.

- words: each word is one term (an identifier typed whole, `functionName`, is its whole form);
- `"quoted phrase"`: its terms in that order, required;
- `-word`, `-"a phrase"`: documents containing it are excluded;
- minimum should match: with `n` terms a document must match `required(n)` of them, that is all
  of them up to 1 term, then all but one, and all but a quarter (rounded down) from 8 terms on;
- typo tolerance (optional): a term of `TYPO_MIN_CHARS` or more also matches any indexed term at
  one edit (insertion, deletion, substitution, transposition), scored below an exact match.

Ranking: documents are ordered by how many terms they match (an exact match counts 2, a typo
match 1), so every all-terms match comes first, then by the engine's relevance (title weighs
most, then tags, then body). The score reported is `TIER * that count + relevance`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from capstan.search.analysis import tokens

MAX_TERMS = 32
TYPO_MIN_CHARS = 5
# Per matched-term unit; relevance never reaches it (BM25 over 3 fields and <= 32 terms).
TIER = 1000.0
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PART = re.compile(r'(-?)"([^"]*)"?|(-?)(\S+)')

Rule = Literal["all", "typo", "most"]


@dataclass(frozen=True, slots=True)
class Term:
    text: str
    # Indexed forms at one edit (typo tolerance on), never the term itself.
    variants: tuple[str, ...] = ()


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
        out = [t.text for t in self.terms]
        for phrase in self.phrases:
            out.extend(phrase)
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


def parse(text: str, *, typos: bool = False) -> ParsedQuery:
    """The query a search text stands for."""
    terms: dict[str, None] = {}
    phrases: list[tuple[str, ...]] = []
    excluded: list[tuple[str, ...]] = []
    for m in PART.finditer(text):
        quoted = m.group(2)
        if quoted is not None:
            phrase = tuple(t.term for t in tokens(quoted) if not t.whole)
            if not phrase:
                continue
            if m.group(1):
                excluded.append(phrase)
            elif len(phrase) == 1:
                terms.setdefault(phrase[0])
            else:
                phrases.append(phrase)
            continue
        negative, word = m.group(3), m.group(4)
        found = list(tokens(word))
        # An identifier is one term, its whole form; its parts (same span) are not repeated.
        wholes = {(t.start, t.end) for t in found if t.whole}
        groups = [t.term for t in found if t.whole or (t.start, t.end) not in wholes]
        for term in groups:
            if negative:
                excluded.append((term,))
            else:
                terms.setdefault(term)
    chosen = list(terms)[:MAX_TERMS]
    built = tuple(
        Term(t, tuple(sorted(edits(t))) if typos and len(t) >= TYPO_MIN_CHARS else ())
        for t in chosen
    )
    return ParsedQuery(
        built,
        tuple(dict.fromkeys(phrases)),
        tuple(dict.fromkeys(excluded)),
        required(len(built)),
    )
