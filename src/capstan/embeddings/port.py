"""The embedding port: every adapter turns texts into unit-length vectors of one fixed dimension
and says which model (and which version of it) made them, so a stored vector can be traced to its
model and re-embedded when the model changes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

Vector = list[float]


class EmbeddingError(Exception):
    """Embedding failed; the message says why and what to do."""


class EmbeddingInputError(EmbeddingError, ValueError):
    """The caller's input cannot be embedded (e.g. an empty or blank text)."""


class EmbeddingRejected(EmbeddingError):
    """The endpoint refused the request for good (4xx other than 429): retrying cannot help."""


class EmbeddingUnavailable(EmbeddingError):
    """The endpoint could not be reached or kept failing (timeouts, 429, 5xx) after retries."""


class EmbeddingProtocolError(EmbeddingError):
    """The endpoint answered, but not with the vectors asked for (shape, count, dimension)."""


@runtime_checkable
class Embedder(Protocol):
    """Texts in, one unit-length (L2) vector per text out, in order.

    `model` names the model, `dimension` is the length of every vector, and `version` changes
    whenever the same texts could come out as different vectors (new weights, new tokenizer):
    a vector is comparable only with vectors of the same `(model, version)`."""

    @property
    def model(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def version(self) -> str: ...

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """One vector per text, in order; `[]` for `[]`. A blank text is an
        EmbeddingInputError; nothing is sent for a call that has one."""
        ...

    async def aclose(self) -> None:
        """Release connections (a no-op for in-process models)."""
        ...


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or EmbeddingInputError naming the first one no model can embed."""
    if isinstance(texts, str):
        raise EmbeddingInputError("embed() takes a sequence of texts, not one string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise EmbeddingInputError(f"text {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise EmbeddingInputError(f"text {i} is empty or blank: there is nothing to embed")
    return out
