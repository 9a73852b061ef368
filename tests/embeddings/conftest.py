from __future__ import annotations

from collections.abc import Iterator

import pytest

from capstan.embeddings.static import StaticEmbedder
from tests.embeddings.server import EmbeddingsServer


@pytest.fixture(scope="session")
def offline() -> StaticEmbedder:
    return StaticEmbedder.load()


@pytest.fixture
def server(offline: StaticEmbedder) -> Iterator[EmbeddingsServer]:
    """A real embeddings server on a free loopback port, stopped after the test."""
    s = EmbeddingsServer(offline)
    s.start()
    yield s
    s.stop()
