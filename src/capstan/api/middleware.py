"""One pure-ASGI middleware for what every request needs: request id, body limit, metrics, log.

Pure ASGI (not BaseHTTPMiddleware) because it sits on the hot path of every request.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator

from fastapi import HTTPException
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capstan.api.problems import PROBLEM_JSON, TYPE_BASE
from capstan.observability.context import reset_request_id, set_request_id
from capstan.observability.metrics import Metrics

log = logging.getLogger("capstan.access")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class BodyTooLarge(HTTPException):
    """Raised from `receive`; FastAPI re-raises HTTPExceptions from body parsing as they are."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # Per app, not at import time: each worker process builds its own app.
        self._ids = _request_ids()
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope, self._ids)
        token = set_request_id(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False
        self.metrics.http_in_flight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                status = 413
                await self._too_large(send_with_id, request_id)
                return
            try:
                await self.app(scope, self._limited(receive), send_with_id)
            except BodyTooLarge:
                if response_started:
                    raise
                status = 413
                await self._too_large(send_with_id, request_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.http_in_flight.dec()
            self._observe(template, method, status, elapsed)
            # The extra dict costs even when INFO is off (the bench runs at WARNING).
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    extra={
                        "method": method,
                        "path": scope["path"],
                        "route": template,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
            reset_request_id(token)

    def _observe(self, template: str, method: str, status: int, elapsed: float) -> None:
        # prometheus_client's labels() validates and locks on every call: keep the children.
        # Bounded like the metric itself: route templates x methods x statuses.
        key = (template, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.metrics.http_requests.labels(template, method, str(status)),
                self.metrics.http_duration.labels(template, method),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return receive_limited

    async def _too_large(self, send: Send, request_id: str) -> None:
        body = json.dumps(
            {
                "type": TYPE_BASE + "too-large",
                "title": "Content Too Large",
                "status": 413,
                "detail": f"the request body is larger than {self.max_body_bytes} bytes",
                "request_id": request_id,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _request_id(scope: Scope, made: Iterator[str]) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
            break
    return next(made)


def _request_ids() -> Iterator[str]:
    """32 hex digits: a random per-process prefix and a counter (unique without a uuid4 each)."""
    prefix = secrets.token_hex(8)
    for n in itertools.count():
        yield f"{prefix}{n & 0xFFFFFFFFFFFFFFFF:016x}"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
