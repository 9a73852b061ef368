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
    matches; every match in `<em>…</em>` (not HTML-escaped)."""
    out: list[str] = []
    title_spans = spans(title, words)
    if title_spans:
        out.append(_marked(title, title_spans, 0, len(title)))
    body_spans = spans(body, words)
    end = -1
    for s, e in body_spans:
        if len(out) - bool(title_spans) >= MAX_FRAGMENTS:
            break
        if s < end:
            continue
        start = max(0, s - FRAGMENT_CHARS // 3)
        # Start and end on a word boundary.
        if start > 0:
            space = body.find(" ", start)
            start = space + 1 if 0 <= space < s else start
        end = min(len(body), start + FRAGMENT_CHARS)
        end = max(end, e)
        if end < len(body):
            space = body.rfind(" ", e, end)
            end = space if space > e else end
        out.append(_marked(body, body_spans, start, end))
    return out
