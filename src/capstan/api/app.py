"""The FastAPI app factory: `create_app(settings)` builds a fresh app and its container."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import capstan
from capstan.api import docs, problems
from capstan.api.health import router as health_router
from capstan.api.middleware import RequestContextMiddleware
from capstan.auth.router import router as sessions_router
from capstan.container import Container, build_container
from capstan.documents.router import router as documents_router
from capstan.events.router import router as events_router
from capstan.roles import Background
from capstan.search.router import router as search_router
from capstan.settings import Settings
from capstan.tasks.router import router as tasks_router
from capstan.webhooks.router import router as webhooks_router


def create_app(
    settings: Settings | None = None,
    container: Container | None = None,
    *,
    with_background: bool = False,
) -> FastAPI:
    """A new API app; pass a container to share one with other roles in the same process.

    `with_background` also runs the relay and every enabled subscriber in this process
    (`capstan dev`).
    """
    settings = settings or Settings()
    own = container is None
    the_container = container or build_container(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if own:
            await the_container.start()
        background = None
        if with_background:
            background = Background(the_container, relay=True, subscribers=["all"], worker=True)
            await background.start()
        try:
            yield
        finally:
            if background is not None:
                await background.stop()
            if own:
                await the_container.close()

    app = FastAPI(
        title="Capstan",
        version=capstan.__version__,
        summary="A self-hosted backend for AI applications.",
        lifespan=lifespan,
        docs_url=None,  # served by capstan.api.docs from local assets
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.container = the_container
    problems.install(app)
    docs.install(app)
    app.include_router(health_router)
    app.include_router(sessions_router)
    app.include_router(documents_router)
    app.include_router(events_router)
    app.include_router(tasks_router)
    app.include_router(webhooks_router)
    app.include_router(search_router)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=the_container.metrics,
        max_body_bytes=settings.max_body_bytes,
    )
    return app
