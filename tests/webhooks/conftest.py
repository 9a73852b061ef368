"""Fixtures for webhook tests: an app with the webhooks router, a real HTTP receiver, and
helpers to feed events to the notifier and run the dispatcher."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, select

from capstan.api.app import create_app
from capstan.db.schema import Webhook, WebhookDelivery
from capstan.events.envelope import Event, encode, parse_event
from capstan.events.outbox import envelope
from capstan.subscribers.notifier import NotifierSubscriber
from capstan.webhooks import router as webhooks_router
from capstan.webhooks.dispatcher import WebhookDispatcher
from tests.conftest import Api


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 answering with `statuses` in turn, then `then`."""

    statuses: list[int] = field(default_factory=list)
    then: int = 200
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    got_request: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, request: Received) -> int:
        with self._lock:
            self.requests.append(request)
            self.got_request.set()
            return self.statuses.pop(0) if self.statuses else self.then


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            code = state.answer(Received(self.path, dict(self.headers.items()), body))
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


@dataclass
class Hooks:
    """The API under test with /v1/webhooks mounted (private receiver URLs allowed)."""

    api: Api
    app: FastAPI
    strict_app: FastAPI  # the same container with webhook_allow_private=False

    def client(self, key: str, *, strict: bool = False) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.strict_app if strict else self.app),
            base_url="http://capstan.test",
            headers={"Authorization": f"Bearer {key}"},
        )

    def dispatcher(self, **settings: Any) -> WebhookDispatcher:
        """A dispatcher with fast retries, allowing private addresses unless overridden."""
        options = {
            "webhook_allow_private": True,
            "webhook_retry_base_seconds": 0.2,
            "webhook_timeout_seconds": 5.0,
            **settings,
        }
        extra = {k: options.pop(k) for k in ("resolver", "jitter", "poll_seconds") if k in options}
        c = self.api.container
        return WebhookDispatcher(c.db, c.metrics, c.settings.model_copy(update=options), **extra)

    async def create(self, key: str, url: str, patterns: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url}
        if patterns is not None:
            body["patterns"] = patterns
        async with self.client(key) as http:
            response = await http.post("/v1/webhooks", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def feed(self, event: Event, notifier: NotifierSubscriber | None = None) -> None:
        """Hand `event` to the notifier inside a transaction, as the subscriber runtime does."""
        async with self.api.container.db.begin() as session:
            await (notifier or NotifierSubscriber()).handle(event, session)

    async def deliveries(self, key: str, webhook_id: str) -> list[dict[str, Any]]:
        async with self.client(key) as http:
            response = await http.get(f"/v1/webhooks/{webhook_id}/deliveries")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def delivery_count(self) -> int:
        async with self.api.container.db() as session:
            return len(list(await session.scalars(select(WebhookDelivery.id))))

    async def dispatch_until_settled(
        self, dispatcher: WebhookDispatcher, delivery_ids: list[int] | None = None
    ) -> None:
        """Run passes, sleeping until the next retry is due, until nothing is pending."""
        for _ in range(50):
            await dispatcher.dispatch_due()
            async with self.api.container.db() as session:
                query = select(WebhookDelivery.next_attempt_at).where(
                    WebhookDelivery.status == "pending"
                )
                if delivery_ids is not None:
                    query = query.where(WebhookDelivery.id.in_(delivery_ids))
                due = [t for t in await session.scalars(query) if t is not None]
            if not due:
                return
            wait = (min(due) - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(max(wait, 0) + 0.01)
        raise AssertionError("deliveries did not settle")


def make_event(tenant_id: str, entity: str = "document", action: str = "created") -> Event:
    env = envelope(
        source="capstan-test",
        entity=entity,
        action=action,
        tenant_id=tenant_id,
        subject=f"{entity}s/x",
        data={"id": "x", "version": 1},
    )
    return parse_event(encode(env))


def with_webhooks(app: FastAPI) -> FastAPI:
    """Mount /v1/webhooks unless create_app already does."""
    if not any(getattr(route, "path", "") == "/v1/webhooks" for route in app.routes):
        app.include_router(webhooks_router.router)
    return app


async def _clear(api: Api) -> None:
    # Production-mode tests share one database: leave no webhook for the next test's dispatcher.
    async with api.container.db.begin() as session:
        await session.execute(delete(Webhook))


@pytest.fixture
async def hooks(api: Api) -> AsyncIterator[Hooks]:
    c = api.container
    allowing = replace(c, settings=c.settings.model_copy(update={"webhook_allow_private": True}))
    app = with_webhooks(create_app(allowing.settings, allowing))
    strict = with_webhooks(create_app(c.settings, c))
    await _clear(api)
    yield Hooks(api, app, strict)
    await _clear(api)
