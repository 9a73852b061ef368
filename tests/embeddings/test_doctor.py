"""`capstan doctor` reports the embedder: the offline model, or the configured endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from capstan.cli.doctor import _embeddings
from capstan.settings import Settings
from tests.conftest import free_port
from tests.embeddings.server import EmbeddingsServer


async def test_the_offline_model_is_reported_with_its_identity() -> None:
    check = await _embeddings(Settings(embeddings_url=""))
    assert check.status == "ok"
    assert check.detail.startswith("offline: wordllama-l2-supercat-256, 256 dimensions, version ")


async def test_an_endpoint_down_fails_and_names_the_settings() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    check = await _embeddings(Settings(embeddings_url=url, embeddings_model="m"))
    assert check.status == "fail" and "ConnectError" in check.detail
    assert "CAPSTAN_EMBEDDINGS_URL" in check.fix


def test_doctor_probes_the_configured_endpoint(server: EmbeddingsServer, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CAPSTAN_DATA_DIR": str(tmp_path),
        "CAPSTAN_EMBEDDINGS_URL": server.url,
        "CAPSTAN_EMBEDDINGS_MODEL": server.model,
    }
    done = subprocess.run(
        [sys.executable, "-m", "capstan.cli.main", "doctor", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert checks["embeddings"]["status"] == "ok", checks["embeddings"]
    assert checks["embeddings"]["detail"] == (
        f"endpoint {server.url}: test-model, 256 dimensions, version 1"
    )
    assert server.requests == [
        {"model": "test-model", "input": ["dimension probe"], "encoding_format": "float"}
    ]
