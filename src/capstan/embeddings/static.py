"""The offline default: WordLlama's static token embeddings (l2_supercat, 256 dimensions, MIT),
whose weights and tokenizer ship inside the `wordllama` wheel on PyPI.

A text's vector is the L2-normalised sum of its tokens' vectors (WordLlama's own inference is
the mean, normalised: the same direction). Nothing is downloaded, ever: the files are found
inside the installed package without importing it (its import configures the root logger, and
its own loader looks for the tokenizer under a folder the wheel does not have, then fetches it
from a model hub), and a missing file is an error that says how to reinstall.

Static embeddings know word meanings, not word order: paraphrases land close, but "dog bites
man" and "man bites dog" are one vector. docs/embeddings.md compares it with the alternatives.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from capstan.embeddings.port import EmbeddingError, Vector, check_texts

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PACKAGE = "wordllama"
MODEL = "wordllama-l2-supercat-256"
WEIGHTS = Path("weights") / "l2_supercat_256.safetensors"
TOKENIZER = Path("tokenizers") / "l2_supercat_tokenizer_config.json"
TENSOR = "embedding.weight"
# Texts tokenized per call: bounds the memory of one step's encodings.
STEP = 256


def package_dir() -> Path:
    """Where the installed `wordllama` package is, found without running its code."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingError(
            f"the offline embedding model needs the `{PACKAGE}` package: "
            "install Capstan with `scripts/bootstrap` (pip install -c constraints.txt -e .)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class StaticEmbedder:
    """In-process static embeddings; CPU only, thread-safe, deterministic."""

    def __init__(
        self, weights: npt.NDArray[np.float32], tokenizer: Tokenizer, version: str
    ) -> None:
        self._weights = weights
        self._tokenizer = tokenizer
        self._version = version

    @classmethod
    def load(cls, root: Path | None = None) -> StaticEmbedder:
        """Read the bundled weights and tokenizer (about 20 MB; blocking: call it off the
        event loop, as `build_embedder` does)."""
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        root = root or package_dir()
        weights_path, tokenizer_path = root / WEIGHTS, root / TOKENIZER
        for path in (weights_path, tokenizer_path):
            if not path.is_file():
                raise EmbeddingError(
                    f"{path} is missing from the installed `{PACKAGE}` package: reinstall it "
                    f"from its wheel (pip install --force-reinstall -c constraints.txt {PACKAGE})"
                )
        digest = hashlib.sha256()
        for path in (weights_path, tokenizer_path):
            digest.update(path.read_bytes())
        tensors = load_file(str(weights_path))
        weights = np.ascontiguousarray(tensors[TENSOR], dtype=np.float32)
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return cls(weights, tokenizer, digest.hexdigest()[:16])

    @property
    def model(self) -> str:
        return MODEL

    @property
    def dimension(self) -> int:
        return int(self._weights.shape[1])

    @property
    def version(self) -> str:
        """A digest of the weights and the tokenizer: the vectors change only when it does."""
        return self._version

    @property
    def package_version(self) -> str:
        return importlib.metadata.version(PACKAGE)

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """One unit vector per text (computed in a worker thread: it is CPU work)."""
        items = check_texts(texts)
        if not items:
            return []
        return await asyncio.to_thread(self.embed_sync, items)

    def embed_sync(self, texts: list[str]) -> list[Vector]:
        """`embed` for callers that are not on an event loop (and for the benchmark)."""
        out: list[Vector] = []
        for i in range(0, len(texts), STEP):
            out.extend(self._embed_step(texts[i : i + STEP]).tolist())
        return out

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` for this model (what `chunking` measures with unit="tokens")."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def _embed_step(self, texts: list[str]) -> npt.NDArray[np.float32]:
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        last = self._weights.shape[0] - 1
        for row, encoding in enumerate(encodings):
            if not encoding.ids:
                continue
            ids = np.asarray(encoding.ids, dtype=np.intp)
            # Ids past the table (none in the shipped tokenizer) would index out of bounds.
            np.clip(ids, 0, last, out=ids)
            # One text at a time: its token rows stay in cache (a gather of the whole batch
            # then np.add.reduceat measured 10x slower).
            np.sum(self._weights.take(ids, axis=0), axis=0, out=vectors[row])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return vectors

    async def aclose(self) -> None:
        return None
