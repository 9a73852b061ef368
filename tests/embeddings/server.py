"""A real OpenAI-compatible embeddings server on loopback, for the adapter's tests: uvicorn
serving a Starlette app in a thread of the test process, computing vectors with the offline
model. Like several real servers, it answers with the items in reverse order and the vectors
not normalised (times 2.5), which the adapter must undo. Faults are scripted per request."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capstan.embeddings.static import StaticEmbedder
from tests.conftest import free_port

SCALE = 2.5


@dataclass
class Fault:
    """What the server does with one request instead of answering it."""

    status: int | None = None  # answer with this status and an OpenAI error body
    retry_after: str | None = None
    hang: bool = False  # never answer (until the server stops)
    body: Any = None  # answer 200 with this JSON instead of the embeddings


@dataclass
class EmbeddingsServer:
    embedder: StaticEmbedder
    model: str = "test-model"
    api_key: str = ""
    port: int = field(default_factory=free_port)
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._release = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self._release.clear()
        app = Starlette(routes=[Route("/v1/embeddings", self._embeddings, methods=["POST"])])
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            loop="asyncio",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test embeddings server did not start on {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._release.set()  # hung requests end, so the server can shut down
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=20)
            assert not self._thread.is_alive(), "the test embeddings server did not stop"
        self._server = self._thread = None

    async def _embeddings(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        fault = self.faults.pop(0) if self.faults else None
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided")
        if fault is not None:
            if fault.hang:
                await asyncio.to_thread(self._release.wait)
                return _error(503, "stopped while hanging")
            if fault.status is not None:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return _error(fault.status, f"scripted {fault.status}", headers)
            return JSONResponse(fault.body)
        if body.get("model") != self.model:
            return _error(404, f"The model `{body.get('model')}` does not exist")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) and t for t in texts):
            return _error(400, "'input' must be a non-empty string or a list of them")
        vectors = await asyncio.to_thread(self.embedder.embed_sync, texts)
        data = [
            {"object": "embedding", "index": i, "embedding": [x * SCALE for x in v]}
            for i, v in enumerate(vectors)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data[::-1],
                "model": self.model,
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": status}},
        status_code=status,
        headers=headers,
    )
