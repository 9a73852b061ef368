"""Text handlers: extractive summary, keywords (YAKE) and language (langdetect).

All run offline: pysbd's sentence rules, YAKE's stopword lists and langdetect's profiles ship
inside their packages. CPU-bound work runs in a thread so the worker's loop keeps beating, and
long work (sentence splitting: about 8 s for 120 KB) runs a piece at a time, reporting progress
and honouring cancellation between pieces.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from capstan.tasks.context import TaskContext
from capstan.tasks.registry import TaskRegistry, TaskType

MAX_TEXT = 200_000
# Sentence splitting runs this many characters at a time (about half a second each).
PIECE_CHARS = 8_000
_WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)


class SummarizeInput(BaseModel):
    text: str = Field(..., min_length=1, max_length=MAX_TEXT)
    sentences: int = Field(3, ge=1, le=50, description="how many sentences to keep")
    language: str = Field("en", pattern=r"^[a-z]{2}$", description="for sentence splitting")


class KeywordsInput(BaseModel):
    text: str = Field(..., min_length=1, max_length=MAX_TEXT)
    top: int = Field(10, ge=1, le=100)
    language: str = Field("en", pattern=r"^[a-z]{2}$", description="stopword list to use")
    max_ngram: int = Field(2, ge=1, le=4)


class LanguageInput(BaseModel):
    text: str = Field(..., min_length=1, max_length=MAX_TEXT)


def split_sentences(text: str, language: str = "en") -> list[str]:
    import pysbd

    try:
        segmenter = pysbd.Segmenter(language=language, clean=False)
    except ValueError:
        segmenter = pysbd.Segmenter(language="en", clean=False)
    return [s.strip() for s in segmenter.segment(text) if s.strip()]


def text_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """`text` cut into consecutive pieces of at most about `size` characters, at a line or
    sentence end where there is one, so that splitting each piece alone finds the same
    sentences; joined, the pieces are `text` again."""
    pieces: list[str] = []
    start = 0
    while len(text) - start > size:
        window = text[start : start + size]
        cut = window.rfind("\n") + 1
        if cut <= size // 2:
            cut = max(window.rfind(f"{end} ") for end in ".!?") + 1
        if cut <= size // 2:
            cut = window.rfind(" ") + 1 or size
        pieces.append(text[start : start + cut])
        start += cut
    pieces.append(text[start:])
    return pieces


async def sentences_of(
    text: str, language: str, ctx: TaskContext, start: float, end: float
) -> list[str]:
    """split_sentences a piece at a time, reporting progress from `start` to `end`."""
    pieces = text_pieces(text)
    found: list[str] = []
    for i, piece in enumerate(pieces):
        await ctx.progress(
            start + (end - start) * i / len(pieces), f"splitting sentences ({i}/{len(pieces)})"
        )
        found += await asyncio.to_thread(split_sentences, piece, language)
    ctx.check_cancelled()
    return found


def summarize(text: str, sentences: int = 3, language: str = "en") -> dict[str, Any]:
    """Keep the sentences whose words are most frequent in the text (TF-ISF), in text order."""
    return rank_sentences(split_sentences(text, language), sentences)


def rank_sentences(parts: list[str], sentences: int) -> dict[str, Any]:
    """The `sentences` most representative of `parts` (TF-ISF), in text order."""
    if len(parts) <= sentences:
        return {"summary": " ".join(parts), "sentences": parts, "total_sentences": len(parts)}
    words = [[w.lower() for w in _WORD.findall(p)] for p in parts]
    frequency = Counter(w for ws in words for w in ws)
    spread = Counter(w for ws in words for w in set(ws))
    n = len(parts)

    def score(ws: list[str]) -> float:
        if not ws:
            return 0.0
        total = sum(frequency[w] * math.log(1 + n / spread[w]) for w in ws)
        return total / math.sqrt(len(ws))  # favour dense sentences, not merely long ones

    ranked = sorted(range(n), key=lambda i: score(words[i]), reverse=True)[:sentences]
    kept = [parts[i] for i in sorted(ranked)]
    return {"summary": " ".join(kept), "sentences": kept, "total_sentences": n}


def keywords(
    text: str, top: int = 10, language: str = "en", max_ngram: int = 2
) -> list[dict[str, Any]]:
    import yake

    extractor = yake.KeywordExtractor(lan=language, n=max_ngram, top=top)
    # YAKE: lower scores are more relevant.
    return [
        {"keyword": k, "score": round(float(s), 6)} for k, s in extractor.extract_keywords(text)
    ]


def detect_language(text: str) -> dict[str, Any]:
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect samples randomly; a seed makes answers repeatable
    try:
        found = detect_langs(text)
    except LangDetectException:
        return {"language": None, "probability": 0.0, "candidates": []}
    candidates = [{"language": c.lang, "probability": round(c.prob, 4)} for c in found]
    return {
        "language": candidates[0]["language"],
        "probability": candidates[0]["probability"],
        "candidates": candidates,
    }


async def _summarize(data: SummarizeInput, ctx: TaskContext) -> dict[str, Any]:
    parts = await sentences_of(data.text, data.language, ctx, 0.0, 0.9)
    await ctx.progress(0.9, f"ranking {len(parts)} sentences")
    return await asyncio.to_thread(rank_sentences, parts, data.sentences)


async def _keywords(data: KeywordsInput, ctx: TaskContext) -> dict[str, Any]:
    # YAKE scores need the whole text at once (about 0.6 s for 120 KB): one piece.
    await ctx.progress(0.1, "extracting keywords")
    found = await asyncio.to_thread(keywords, data.text, data.top, data.language, data.max_ngram)
    ctx.check_cancelled()
    return {"keywords": found}


async def _language(data: LanguageInput, ctx: TaskContext) -> dict[str, Any]:
    await ctx.progress(0.1, "detecting the language")
    found = await asyncio.to_thread(detect_language, data.text)
    ctx.check_cancelled()
    return found


def register(registry: TaskRegistry) -> None:
    registry.register(
        TaskType(
            "text.summarize",
            SummarizeInput,
            _summarize,
            "Extractive summary: the most representative sentences, in order.",
        )
    )
    registry.register(
        TaskType(
            "text.keywords",
            KeywordsInput,
            _keywords,
            "Keywords and key phrases (YAKE, unsupervised).",
        )
    )
    registry.register(
        TaskType(
            "text.language", LanguageInput, _language, "The language of a text, with probabilities."
        )
    )
