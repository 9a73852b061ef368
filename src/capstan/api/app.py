"""The FastAPI app factory: `create_app(settings)` builds a fresh app and its container.

An entry point: it calls the composition root (capstan.container, capstan.composition); the
routes get their services from the container it puts in `app.state` (capstan.api.deps)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

import capstan
from capstan.api import docs, openapi, problems
from capstan.api.health import router as health_router
from capstan.api.middleware import RequestContextMiddleware
from capstan.auth.admin_router import router as admin_router
from capstan.auth.failures import refuse_blocked_clients
from capstan.auth.router import router as sessions_router
from capstan.composition import build_background, build_scheduler
from capstan.container import Container, build_container
from capstan.documents.read_route import document_read_route
from capstan.documents.router import router as documents_router
from capstan.events.router import router as events_router
from capstan.search.router import router as search_router
from capstan.settings import Settings
from capstan.tasks.router import router as tasks_router
from capstan.webhooks.router import router as webhooks_router


def create_app(
    settings: Settings | None = None,
    container: Container | None = None,
    *,
    with_background: bool = False,
    with_scheduler: bool = False,
    lean_document_read: bool = True,
) -> FastAPI:
    """A new API app; pass a container to share one with other roles in the same process.

    `with_background` also runs the relay, every enabled subscriber and a worker in this
    process (`capstan dev`), and `with_scheduler` the scheduler. `lean_document_read=False`
    serves GET /v1/documents/{id} with its FastAPI route instead of the lean one (tests compare
    the two).
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
            background = build_background(
                the_container, relay=True, subscribers=["all"], worker=True
            )
            await background.start()
        # Built once the container runs, as before: the backup gauge reads the data dir.
        scheduler = build_scheduler(the_container) if with_scheduler else None
        # Every API instance applies every key revocation (auth/revocations.py).
        stopping = asyncio.Event()
        watcher = asyncio.create_task(the_container.revocations.run(stopping))
        # And installs the durable cache generation in Redis (capstan.cache.generation); an
        # in-process cache is never out of reach, so it needs no watch.
        shared = not the_container.settings.cache_url.startswith("memory")
        poll = the_container.settings.cache_generation_poll_seconds
        generations = asyncio.create_task(
            the_container.documents_cache.watch(stopping, poll) if shared else stopping.wait()
        )
        jobs = asyncio.create_task(scheduler.run(stopping)) if scheduler is not None else None
        try:
            yield
        finally:
            stopping.set()
            # A poll stuck on an unreachable database must not hold up shutdown.
            for task in (watcher, generations):
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=5)
            if jobs is not None:  # a failing job is the scheduler's to log, not shutdown's
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(jobs, timeout=10)
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
    openapi.install(app)
    docs.install(app)
    app.include_router(health_router)
    # Runs before authentication: an in-process lookup, no round trip (auth/failures.py).
    guarded = [Depends(refuse_blocked_clients)]
    for router in (
        admin_router,
        sessions_router,
        documents_router,
        events_router,
        tasks_router,
        webhooks_router,
        search_router,
    ):
        app.include_router(router, dependencies=guarded)
    if lean_document_read:
        _shadow(app, document_read_route(the_container), documents_router)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=the_container.metrics,
        max_body_bytes=settings.max_body_bytes,
    )
    return app


def _shadow(app: FastAPI, lean: Route, router: APIRouter) -> None:
    """Serve `lean` instead of `router`'s FastAPI route of the same path and methods, which
    OpenAPI (built from FastAPI routes only) still describes.

    First in the routing table: FastAPI's matching of included routers costs more per router
    than the whole lean response, and no other route matches this path and method.
    """
    if not any(
        isinstance(r, APIRoute) and (r.path, r.methods) == (lean.path, lean.methods)
        for r in router.routes
    ):
        raise LookupError(f"no FastAPI route {lean.methods} {lean.path} to stand in for")
    app.router.routes.insert(0, lean)
