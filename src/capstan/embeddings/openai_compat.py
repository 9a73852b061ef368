"""An adapter for any OpenAI-compatible embeddings endpoint (OpenAI, vLLM, Ollama, LM Studio,
llama.cpp's server, text-embeddings-inference, LiteLLM...): `POST {url}/embeddings` with
`{"model", "input": [...], "encoding_format": "float"}`, answered by `{"data": [{"index",
"embedding"}]}`.

Batches of at most `batch_size` texts, one request each, in order. 429, 5xx, timeouts and
connection failures are retried with exponential backoff and jitter (honouring a `Retry-After`
in seconds, capped), then raise EmbeddingUnavailable; any other 4xx raises EmbeddingRejected at
once with the server's message. Every answer is checked (count, indexes, numbers, dimension)
and the vectors are normalised to unit length, as the port promises.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import httpx

from capstan.embeddings.port import (
    EmbeddingProtocolError,
    EmbeddingRejected,
    EmbeddingUnavailable,
    Vector,
    check_texts,
)
from capstan.retry import Backoff

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 30.0
# A probe text for endpoints whose dimension is not configured.
PROBE = "dimension probe"


def endpoint_url(url: str) -> str:
    """`http://host/v1` (the base an OpenAI client takes) or the full `.../embeddings` URL."""
    url = url.rstrip("/")
    return url if url.endswith("/embeddings") else url + "/embeddings"


class OpenAICompatibleEmbedder:
    """Embeddings from a remote endpoint; open with `connect`, close with `aclose`."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        dimension: int,
        version: str = "1",
        api_key: str = "",
        timeout_seconds: float = 30.0,
        max_attempts: int = 5,
        retry_base_seconds: float = 0.5,
        batch_size: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"embeddings URL must be http:// or https:// (got {url!r})")
        if not model:
            raise ValueError("an embeddings endpoint needs a model name (CAPSTAN_EMBEDDINGS_MODEL)")
        self.url = endpoint_url(url)
        self._model = model
        self._dimension = dimension
        self._version = version
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5.0)),
            transport=transport,
        )

    @classmethod
    async def connect(
        cls, url: str, model: str, *, dimension: int | None = None, **options: Any
    ) -> OpenAICompatibleEmbedder:
        """An adapter whose dimension is the configured one, or else the one the endpoint
        answers a probe with (so a wrong URL or model fails at start, not on first use)."""
        embedder = cls(url, model, dimension=dimension or 0, **options)
        if dimension is None:
            try:
                (vector,) = await embedder._request([PROBE])
            except BaseException:
                await embedder.aclose()
                raise
            embedder._dimension = len(vector)
        return embedder

    @property
    def model(self) -> str:
        return self._model

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def version(self) -> str:
        """Configured (CAPSTAN_EMBEDDINGS_VERSION): the endpoint cannot say when its weights
        change under the same model name, so the operator bumps it."""
        return self._version

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        items = check_texts(texts)
        out: list[Vector] = []
        for i in range(0, len(items), self.batch_size):
            out.extend(await self._request(items[i : i + self.batch_size]))
        return out

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, texts: list[str]) -> list[Vector]:
        body = {"model": self._model, "input": texts, "encoding_format": "float"}
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._client.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                last = f"no answer within the timeout ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc or 'connection failed'}"
            else:
                if response.status_code < 300:
                    return self._vectors(response, len(texts))
                detail = _error_message(response)
                if response.status_code not in RETRY_STATUSES:
                    raise EmbeddingRejected(
                        f"{self.url} refused the request: HTTP {response.status_code}: {detail}"
                        + _hint(response.status_code)
                    )
                last = f"HTTP {response.status_code}: {detail}"
                retry_after = _retry_after(response)
            if attempt < self.max_attempts:
                await asyncio.sleep(self._backoff(attempt, retry_after))
        raise EmbeddingUnavailable(f"{self.url} failed {self.max_attempts} times; last: {last}")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_SECONDS)
        # Full jitter: concurrent callers that failed together do not retry together.
        return Backoff(self.retry_base_seconds, jitter="full").delay(attempt)

    def _vectors(self, response: httpx.Response, expected: int) -> list[Vector]:
        try:
            payload = response.json()
            data = payload["data"]
            pairs = sorted((int(item["index"]), item["embedding"]) for item in data)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingProtocolError(
                f"{self.url} answered HTTP {response.status_code} without an OpenAI embeddings "
                f"body ({type(exc).__name__}: {exc}): {response.text[:200]!r}"
            ) from exc
        if [i for i, _ in pairs] != list(range(expected)):
            raise EmbeddingProtocolError(
                f"{self.url} returned {len(pairs)} embeddings for {expected} texts "
                f"(indexes {[i for i, _ in pairs][:10]})"
            )
        out: list[Vector] = []
        for i, raw in pairs:
            if not isinstance(raw, list) or not all(
                isinstance(x, int | float) and math.isfinite(x) for x in raw
            ):
                raise EmbeddingProtocolError(
                    f"{self.url}: embedding {i} is not a list of finite numbers (a base64 "
                    "answer means the server ignored encoding_format=float)"
                )
            if self._dimension and len(raw) != self._dimension:
                raise EmbeddingProtocolError(
                    f"{self.url}: embedding {i} has {len(raw)} dimensions, expected "
                    f"{self._dimension} (CAPSTAN_EMBEDDINGS_DIMENSION, or what the model gave "
                    "at start): is it the same model?"
                )
            norm = math.sqrt(math.fsum(x * x for x in raw))
            if norm == 0:
                raise EmbeddingProtocolError(f"{self.url}: embedding {i} is all zeros")
            out.append([float(x) / norm for x in raw])
        return out


def _error_message(response: httpx.Response) -> str:
    """OpenAI's `{"error": {"message"}}`, a problem+json `detail`, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for key in ("detail", "message", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return response.text[:200]


def _hint(status: int) -> str:
    if status in (401, 403):
        return " (check CAPSTAN_EMBEDDINGS_API_KEY)"
    if status == 404:
        return " (check CAPSTAN_EMBEDDINGS_URL, e.g. http://host:port/v1, and the model name)"
    return ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return max(seconds, 0.0)
