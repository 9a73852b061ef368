"""The background roles (relay, subscribers) built from a container, runnable together in one
process (`capstan dev`) or one per process (`capstan relay`, `capstan subscriber NAME`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from capstan.container import Container, build_container
from capstan.embeddings.reconcile import EmbeddingsReconciler
from capstan.relay.relay import OutboxRelay
from capstan.relay.replay import replay_unhandled
from capstan.search.reconcile import build_reconciler
from capstan.settings import Settings
from capstan.subscribers.audit import AuditSubscriber
from capstan.subscribers.cache import CacheSubscriber
from capstan.subscribers.embedder import EmbedderSubscriber
from capstan.subscribers.indexer import IndexerSubscriber
from capstan.subscribers.notifier import NotifierSubscriber
from capstan.subscribers.runtime import Subscriber, SubscriberRunner, queue_spec
from capstan.webhooks.dispatcher import WebhookDispatcher
from capstan.worker.maintenance import TaskMaintenance
from capstan.worker.queues import task_queue_spec
from capstan.worker.worker import Worker

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer
    from wsgiref.types import StartResponse, WSGIEnvironment

    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

MONITOR_SECONDS = 10.0

# /metrics and /healthz of each non-API role when CAPSTAN_METRICS_PORT is unset: one port per
# role, so every role runs side by side on one host (compose gives each container 9400).
ROLE_METRICS_PORTS = {"worker": 9401, "relay": 9402, "subscriber": 9403, "scheduler": 9404}


class RoleError(Exception):
    """A role cannot start for a reason its operator can fix (said in the message)."""


def with_metrics_port(settings: Settings, role: str) -> Settings:
    """`settings` with the role's default metrics port when CAPSTAN_METRICS_PORT is unset."""
    if settings.metrics_port is not None:
        return settings
    return settings.model_copy(update={"metrics_port": ROLE_METRICS_PORTS[role]})


def build_relay(c: Container) -> OutboxRelay:
    s = c.settings
    return OutboxRelay(
        c.engine,
        c.db,
        c.broker,
        c.metrics,
        dialect=c.dialect,
        batch_size=s.outbox_batch_size,
        poll_seconds=s.outbox_poll_seconds,
        retention_hours=s.outbox_retention_hours,
        wakeup=c.outbox_wakeup,
        topology=c.topology,
        declare=[
            queue_spec(build_subscriber(c, name), s.event_retry_delays_ms, c.topology)
            for name in subscriber_names(c, ["all"])
        ],
        task_queue=lambda queue: task_queue_spec(c.topology, queue),
        fast=c.fast,
        linger_seconds=s.outbox_linger_ms / 1000,
    )


def subscriber_names(c: Container, requested: list[str]) -> list[str]:
    """Expand `all` to the enabled subscribers; reject unknown names."""
    names = c.settings.subscribers if requested == ["all"] else requested
    unknown = sorted(set(names) - set(SUBSCRIBERS))
    if unknown:
        raise ValueError(
            f"unknown subscriber(s): {', '.join(unknown)}; known: {', '.join(SUBSCRIBERS)}"
        )
    return list(names)


def build_subscriber(c: Container, name: str) -> Subscriber:
    return SUBSCRIBERS[name](c)


def build_embeddings_reconciler(c: Container) -> EmbeddingsReconciler | None:
    s = c.settings
    if c.embeddings is None or s.embeddings_reconcile_seconds <= 0:
        return None
    return EmbeddingsReconciler(
        c.embeddings.pipeline,
        c.db,
        c.tasks,
        interval=s.embeddings_reconcile_seconds,
        grace_seconds=s.embeddings_reconcile_grace_seconds,
        metrics=c.metrics,
    )


def build_runner(c: Container, subscriber: Subscriber) -> SubscriberRunner:
    s = c.settings
    return SubscriberRunner(
        subscriber,
        c.broker,
        c.db,
        c.metrics,
        prefetch=s.subscriber_prefetch,
        ordered_batch=s.subscriber_ordered_batch,
        max_attempts=getattr(subscriber, "max_attempts", None) or s.event_max_attempts,
        retry_delays_ms=s.event_retry_delays_ms,
        topology=c.topology,
        record_all=s.broker_in_process,
    )


SUBSCRIBERS: dict[str, Callable[[Container], Subscriber]] = {
    "indexer": lambda c: IndexerSubscriber(
        c.metrics,
        c.search,
        c.db,
        batch_size=c.settings.search_batch_size,
        linger_ms=c.settings.search_batch_linger_ms,
        max_attempts=c.settings.search_indexer_max_attempts,
    ),
    "cache": lambda c: CacheSubscriber(c.cache, c.settings.cache_ttl_seconds),
    "audit": lambda c: AuditSubscriber(c.topology.realtime_exchange, c.fast),
    "notifier": lambda c: NotifierSubscriber(fast=c.fast),
    "embedder": lambda c: EmbedderSubscriber(c.task_registry, c.settings),
}


class Background:
    """Relay and subscribers as tasks of this process; `stop()` drains them gracefully."""

    def __init__(
        self,
        c: Container,
        *,
        relay: bool,
        subscribers: list[str],
        worker: bool = False,
        worker_queues: list[str] | None = None,
        worker_concurrency: int | None = None,
    ) -> None:
        self._c = c
        self._relay = build_relay(c) if relay else None
        names = subscriber_names(c, subscribers)
        self._loops: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = []
        # The dispatcher runs beside the notifier, which wakes it after each commit.
        self.dispatcher = (
            WebhookDispatcher(c.db, c.metrics, c.settings) if "notifier" in names else None
        )
        if self.dispatcher is not None:
            self._loops.append(self.dispatcher.run)
        # The search reconciler runs beside the indexer (when Elasticsearch is the index).
        self.reconciler = build_reconciler(c) if "indexer" in names else None
        if self.reconciler is not None:
            self._loops.append(self.reconciler.run)
        # The embeddings drift check runs beside the embedder subscriber.
        self.embeddings_reconciler = build_embeddings_reconciler(c) if "embedder" in names else None
        if self.embeddings_reconciler is not None:
            self._loops.append(self.embeddings_reconciler.run)
        self.runners = [
            build_runner(
                c,
                NotifierSubscriber(wake=self.dispatcher.wake, fast=c.fast)
                if n == "notifier" and self.dispatcher is not None
                else build_subscriber(c, n),
            )
            for n in names
        ]
        self.worker: Worker | None = None
        if worker:
            self.worker = Worker(
                c, c.task_registry, queues=worker_queues, concurrency=worker_concurrency
            )
            self._loops += [self.worker.run, TaskMaintenance(c).run]
        if self.runners or self.worker is not None:
            self._loops.append(self._monitor)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def relay(self) -> OutboxRelay | None:
        return self._relay

    async def _monitor(self, stopping: asyncio.Event) -> None:
        """Queue gauges no message would update: dead letters, and lag back to 0 when idle."""
        m = self._c.metrics
        dead_queues = [r.spec.dead_letter_queue for r in self.runners]
        if self.worker is not None:
            dead_queues += [
                task_queue_spec(self._c.topology, q).dead_letter_queue for q in self.worker.queues
            ]
        while not stopping.is_set():
            for queue in dead_queues:
                try:
                    m.dead_letters.labels(queue).set(await self._c.broker.queue_depth(queue))
                except Exception as exc:  # the broker may be down; try again next round
                    log.debug("dead-letter depth unavailable", extra={"error": repr(exc)})
            now = time.monotonic()
            for runner in self.runners:
                if now - runner.last_handled > MONITOR_SECONDS:
                    m.subscriber_lag.labels(runner.name).set(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), MONITOR_SECONDS)

    def add_loop(self, loop: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        """Run `loop(stopping)` beside the others (e.g. the webhook dispatcher)."""
        self._loops.append(loop)

    async def start(self) -> None:
        # Queues exist before the relay publishes, so no event is routed to nowhere.
        for runner in self.runners:
            await runner.start()
        if self._relay is not None and self._c.settings.broker_in_process:
            await self._replay()
        loops = list(self._loops)
        if self._relay is not None:
            loops.append(self._relay.run)
        self._tasks = [asyncio.create_task(loop(self._stopping)) for loop in loops]

    async def _replay(self) -> None:
        """The in-process broker lost its queues with the last process: give each subscriber
        the events it has no record of (capstan.relay.replay), before anything new."""
        s = self._c.settings
        since = datetime.now(UTC) - timedelta(days=s.processed_events_retention_days)
        await replay_unhandled(
            self._c.db, self._c.broker, [(r.name, r.spec) for r in self.runners], since=since
        )

    async def stop(self) -> None:
        self._stopping.set()
        for runner in self.runners:
            await runner.stop()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=10)
            for task in pending:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def serve_metrics(port: int, host: str, registry: CollectorRegistry) -> WSGIServer:
    """/metrics (Prometheus) and /healthz (liveness, for the compose health check) of a
    non-API role, on a daemon thread; any other path also answers metrics, as before."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not logged
            pass

    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"status":"ok"}']
        result: Iterable[bytes] = metrics(environ, start_response)
        return result

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


async def run_background(
    settings: Settings,
    *,
    relay: bool,
    subscribers: list[str] | None,
    worker: bool = False,
    worker_queues: list[str] | None = None,
    worker_concurrency: int | None = None,
    scheduler: bool = False,
) -> None:
    """Run background roles until SIGINT/SIGTERM, exposing /metrics and /healthz on
    settings.metrics_port (unset: no metrics server; the CLI fills in the role's default)."""
    container = build_container(settings)
    metrics_server = None
    if settings.metrics_port:  # first: a busy port stops the role before it connects anywhere
        try:
            metrics_server = serve_metrics(
                settings.metrics_port, settings.host, container.metrics.registry
            )
        except OSError as exc:
            await container.close()
            raise RoleError(
                f"cannot serve /metrics on {settings.host}:{settings.metrics_port} "
                f"({exc.strerror}; another role on this host?): give each role its own port "
                "with CAPSTAN_METRICS_PORT=N (0 turns /metrics off)"
            ) from exc
    await container.start()
    background = Background(
        container,
        relay=relay,
        subscribers=subscribers or [],
        worker=worker,
        worker_queues=worker_queues,
        worker_concurrency=worker_concurrency,
    )
    if scheduler:
        from capstan.scheduler.jobs import build_scheduler

        background.add_loop(build_scheduler(container).run)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await background.start()
    log.info(
        "background roles running",
        extra={"relay": relay, "subscribers": [r.name for r in background.runners]},
    )
    try:
        await stop.wait()
    finally:
        await background.stop()
        await container.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
