"""Highlights made in Python from the same analysis as the index, so every engine marks the same
words, stemmed forms included (`files` marks "File")."""

from __future__ import annotations

from collections.abc import Collection

from capstan.search.analysis import tokens

FRAGMENT_CHARS = 150
MAX_FRAGMENTS = 2


def _marked(text: str, spans: list[tuple[int, int]], start: int, end: int) -> str:
    out, at = [], start
    for s, e in spans:
        if s < start or e > end:
            continue
        out += [text[at:s], "<em>", text[s:e], "</em>"]
        at = e
    out.append(text[at:end])
    return "".join(out)


def spans(text: str, words: Collection[str]) -> list[tuple[int, int]]:
    """The character spans of the words of `text` whose terms are in `words`."""
    found: dict[tuple[int, int], None] = {}
    for t in tokens(text):
        if t.term in words:
            found[(t.start, t.end)] = None
    return sorted(found)


def highlight(title: str, body: str, words: Collection[str]) -> list[str]:
    """The title with its matches marked (if any), then up to two body fragments around
    matches; every match in `<em>…</em>` (not HTML-escaped). The body is read only as far as
    the second fragment (a long document costs what its first matches cost)."""
    out: list[str] = []
    title_spans = spans(title, words)
    if title_spans:
        out.append(_marked(title, title_spans, 0, len(title)))
    fragments: list[tuple[int, int, list[tuple[int, int]]]] = []
    seen: set[tuple[int, int]] = set()
    for t in tokens(body):
        if t.term not in words or (t.start, t.end) in seen:
            continue
        seen.add((t.start, t.end))
        s, e = t.start, t.end
        if fragments and s < fragments[-1][1]:
            if e <= fragments[-1][1]:
                fragments[-1][2].append((s, e))
            continue
        if len(fragments) == MAX_FRAGMENTS:
            break
        # Fragments never overlap (a match in two fragments would be marked in one only).
        floor = fragments[-1][1] if fragments else 0
        start = max(floor, s - FRAGMENT_CHARS // 3)
        # Start and end on a word boundary.
        if start > floor:
            space = body.find(" ", start)
            start = space + 1 if 0 <= space < s else start
        while start < s and body[start].isspace():
            start += 1
        end = max(min(len(body), start + FRAGMENT_CHARS), e)
        if end < len(body):
            space = body.rfind(" ", e, end)
            end = space if space > e else end
        fragments.append((start, end, [(s, e)]))
    out += [_marked(body, marks, start, end) for start, end, marks in fragments]
    return out
