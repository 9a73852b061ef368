"""`capstan bench embeddings` end to end, as a command: the offline model, and an
OpenAI-compatible endpoint (the tests' local server) named by CAPSTAN_EMBEDDINGS_URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.embeddings.static import StaticEmbedder
from tests.embeddings.server import EmbeddingsServer


@pytest.fixture
def server() -> Iterator[EmbeddingsServer]:
    s = EmbeddingsServer(StaticEmbedder.load())
    s.start()
    yield s
    s.stop()


def test_it_reports_chunks_per_second_of_both_embedders(
    tmp_path: Path, server: EmbeddingsServer
) -> None:
    output = tmp_path / "embeddings.json"
    env = {
        **os.environ,
        "CAPSTAN_EMBEDDINGS_URL": server.url,
        "CAPSTAN_EMBEDDINGS_MODEL": server.model,
        # No --chunk-size/--chunk-overlap: the settings give them.
        "CAPSTAN_EMBEDDINGS_CHUNK_SIZE": "800",
        "CAPSTAN_EMBEDDINGS_CHUNK_OVERLAP": "100",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "capstan.cli.main",
            "bench",
            "embeddings",
            "--chunks",
            "300",
            "--rounds",
            "2",
            "--batch-size",
            "50",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chunks/s" in done.stdout
    result = json.loads(output.read_text())
    assert result["benchmark"] == "embeddings" and result["valid"]
    assert result["corpus"]["documents"] > 50
    params = result["parameters"]
    assert (params["chunk_size_chars"], params["chunk_overlap_chars"]) == (800, 100)
    assert 300 < result["corpus"]["mean_chunk_chars"] <= 800
    assert result["chunking"]["chunks_per_s"] > 0
    offline = result["embedding"]["offline"]
    assert offline["model"] == "wordllama-l2-supercat-256" and offline["dimension"] == 256
    assert offline["chunks_per_s"] > 0 and len(offline["rounds"]) == 2
    endpoint = result["embedding"]["endpoint"]
    assert endpoint["url"] == server.url and endpoint["chunks_per_s"] > 0
    # warm-up + 2 rounds of 6 batches of 50, plus connect's dimension probe
    assert len(server.requests) == 1 + 1 + 2 * 6
