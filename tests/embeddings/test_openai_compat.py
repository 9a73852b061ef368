"""The OpenAI-compatible adapter against a real local server: retries, timeouts, refusals,
malformed answers, a server that is down or restarts, and settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from capstan.embeddings.factory import build_embedder
from capstan.embeddings.openai_compat import OpenAICompatibleEmbedder, endpoint_url
from capstan.embeddings.port import (
    EmbeddingInputError,
    EmbeddingProtocolError,
    EmbeddingRejected,
    EmbeddingUnavailable,
)
from capstan.embeddings.static import StaticEmbedder
from capstan.settings import Settings
from tests.conftest import free_port
from tests.embeddings.server import EmbeddingsServer, Fault


@pytest.fixture
async def adapter(server: EmbeddingsServer) -> AsyncIterator[OpenAICompatibleEmbedder]:
    a = OpenAICompatibleEmbedder(
        server.url,
        server.model,
        dimension=256,
        max_attempts=3,
        retry_base_seconds=0.01,
        timeout_seconds=5,
    )
    yield a
    await a.aclose()


async def test_vectors_match_the_offline_model_the_server_runs(
    adapter: OpenAICompatibleEmbedder, offline: StaticEmbedder, server: EmbeddingsServer
) -> None:
    texts = ["first text", "second, longer text", "third"]
    got = await adapter.embed(texts)
    want = await offline.embed(texts)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-6)  # unscaled and back in order
    assert server.requests == [{"model": "test-model", "input": texts, "encoding_format": "float"}]


async def test_texts_are_sent_in_batches_of_batch_size(server: EmbeddingsServer) -> None:
    a = OpenAICompatibleEmbedder(server.url, server.model, dimension=256, batch_size=3)
    try:
        vectors = await a.embed([f"text {i}" for i in range(7)])
    finally:
        await a.aclose()
    assert len(vectors) == 7
    assert [len(r["input"]) for r in server.requests] == [3, 3, 1]


@pytest.mark.parametrize(("status", "retry_after"), [(429, "0"), (503, None), (500, None)])
async def test_rate_limits_and_server_errors_are_retried(
    adapter: OpenAICompatibleEmbedder, server: EmbeddingsServer, status: int, retry_after: Any
) -> None:
    server.faults = [Fault(status=status, retry_after=retry_after)] * 2
    vectors = await adapter.embed(["retry me"])
    assert len(vectors) == 1
    assert len(server.requests) == 3


async def test_a_server_that_keeps_failing_is_unavailable_after_max_attempts(
    adapter: OpenAICompatibleEmbedder, server: EmbeddingsServer
) -> None:
    server.faults = [Fault(status=502)] * 10
    with pytest.raises(EmbeddingUnavailable, match=r"failed 3 times; last: HTTP 502: scripted"):
        await adapter.embed(["never"])
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "hint"), [(400, "scripted 400"), (401, "CAPSTAN_EMBEDDINGS_API_KEY"), (422, "422")]
)
async def test_client_errors_are_not_retried(
    adapter: OpenAICompatibleEmbedder, server: EmbeddingsServer, status: int, hint: str
) -> None:
    server.faults = [Fault(status=status)]
    with pytest.raises(EmbeddingRejected, match=hint):
        await adapter.embed(["no"])
    assert len(server.requests) == 1


async def test_a_wrong_api_key_and_an_unknown_model_say_what_to_check(
    offline: StaticEmbedder,
) -> None:
    server = EmbeddingsServer(offline, api_key="right")
    server.start()
    try:
        for key, model, hint in [
            ("wrong", server.model, "Incorrect API key.*CAPSTAN_EMBEDDINGS_API_KEY"),
            ("right", "no-such-model", "does not exist.*CAPSTAN_EMBEDDINGS_URL"),
        ]:
            a = OpenAICompatibleEmbedder(server.url, model, dimension=256, api_key=key)
            with pytest.raises(EmbeddingRejected, match=hint):
                await a.embed(["x"])
            await a.aclose()
        a = OpenAICompatibleEmbedder(server.url, server.model, dimension=256, api_key="right")
        assert len(await a.embed(["x"])) == 1
        await a.aclose()
    finally:
        server.stop()


async def test_a_server_that_does_not_answer_times_out_and_is_retried(
    server: EmbeddingsServer,
) -> None:
    a = OpenAICompatibleEmbedder(
        server.url,
        server.model,
        dimension=256,
        timeout_seconds=0.3,
        max_attempts=2,
        retry_base_seconds=0,
    )
    server.faults = [Fault(hang=True), Fault(hang=True)]
    try:
        with pytest.raises(EmbeddingUnavailable, match="no answer within the timeout"):
            await a.embed(["slow"])
        server.faults = [Fault(hang=True)]  # one more hang, then the retry is answered
        assert len(await a.embed(["slow"])) == 1
    finally:
        await a.aclose()


async def test_a_server_that_is_down_is_unavailable_and_found_again_when_it_restarts(
    offline: StaticEmbedder,
) -> None:
    server = EmbeddingsServer(offline)
    a = OpenAICompatibleEmbedder(
        server.url, server.model, dimension=256, max_attempts=2, retry_base_seconds=0
    )
    try:
        with pytest.raises(EmbeddingUnavailable, match="ConnectError"):
            await a.embed(["nobody is there"])
        server.start()
        assert len(await a.embed(["now somebody is"])) == 1
        server.stop()
        with pytest.raises(EmbeddingUnavailable, match="failed 2 times"):
            await a.embed(["gone again"])
        server.start()
        assert len(await a.embed(["back"])) == 1
    finally:
        await a.aclose()
        server.stop()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"data": []}, "returned 0 embeddings for 1 texts"),
        ({"data": [{"index": 0, "embedding": [0.5] * 3}]}, "has 3 dimensions, expected 256"),
        ({"data": [{"index": 0, "embedding": "AAAA"}]}, "not a list of finite numbers"),
        ({"data": [{"index": 0, "embedding": [0.0] * 256}]}, "all zeros"),
        ({"result": "something else"}, "without an OpenAI embeddings body"),
    ],
)
async def test_malformed_answers_are_protocol_errors(
    adapter: OpenAICompatibleEmbedder, server: EmbeddingsServer, body: Any, match: str
) -> None:
    server.faults = [Fault(body=body)]
    with pytest.raises(EmbeddingProtocolError, match=match):
        await adapter.embed(["x"])


async def test_blank_texts_are_refused_before_anything_is_sent(
    adapter: OpenAICompatibleEmbedder, server: EmbeddingsServer
) -> None:
    with pytest.raises(EmbeddingInputError):
        await adapter.embed(["fine", ""])
    assert server.requests == []


async def test_connect_asks_the_endpoint_for_its_dimension(server: EmbeddingsServer) -> None:
    a = await OpenAICompatibleEmbedder.connect(server.url + "/embeddings", server.model)
    try:
        assert a.dimension == 256
        assert a.url == server.url + "/embeddings"
    finally:
        await a.aclose()
    with pytest.raises(EmbeddingRejected, match="does not exist"):
        await OpenAICompatibleEmbedder.connect(server.url, "unknown-model")


async def test_the_settings_choose_the_embedder(server: EmbeddingsServer) -> None:
    offline = await build_embedder(Settings(embeddings_url=""))
    assert isinstance(offline, StaticEmbedder)
    remote = await build_embedder(
        Settings(embeddings_url=server.url, embeddings_model=server.model, embeddings_version="7")
    )
    try:
        assert isinstance(remote, OpenAICompatibleEmbedder)
        assert (remote.model, remote.dimension, remote.version) == ("test-model", 256, "7")
    finally:
        await remote.aclose()


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match="needs embeddings_model"):
        Settings(embeddings_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValidationError, match="embeddings_url"):
        Settings(embeddings_url="ftp://x", embeddings_model="m")
    with pytest.raises(ValidationError, match="overlap must be smaller"):
        Settings(embeddings_chunk_size=100, embeddings_chunk_overlap=100)
    assert endpoint_url(f"http://127.0.0.1:{free_port()}/v1/").endswith("/v1/embeddings")
