"""The background roles (relay, subscribers, worker...) run together in one process
(`capstan dev`) or one per process (`capstan relay`, `capstan subscriber NAME`, `capstan
worker`). Their parts are built by the composition root (capstan.composition) and handed to
`Background`, which only runs them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from capstan.broker.port import Broker
from capstan.observability.metrics import Metrics
from capstan.relay.relay import OutboxRelay
from capstan.search.reconcile import Reconciler
from capstan.settings import Settings
from capstan.subscribers.runtime import SubscriberRunner
from capstan.webhooks.dispatcher import WebhookDispatcher
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

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class RoleError(Exception):
    """A role cannot start for a reason its operator can fix (said in the message)."""


def with_metrics_port(settings: Settings, role: str) -> Settings:
    """`settings` with the role's default metrics port when CAPSTAN_METRICS_PORT is unset."""
    if settings.metrics_port is not None:
        return settings
    return settings.model_copy(update={"metrics_port": ROLE_METRICS_PORTS[role]})


class Background:
    """Relay, subscribers and other loops as tasks of this process; `stop()` drains them
    gracefully. Built by capstan.composition.build_background."""

    def __init__(
        self,
        *,
        relay: OutboxRelay | None,
        runners: list[SubscriberRunner],
        loops: list[Loop],
        metrics: Metrics,
        broker: Broker,
        dead_queues: list[str],
        worker: Worker | None = None,
        dispatcher: WebhookDispatcher | None = None,
        reconciler: Reconciler | None = None,
        replay: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`replay()` runs before the relay starts (the in-process broker's lost queues);
        `dead_queues` are the queues whose depth the monitor publishes."""
        self._relay = relay
        self.runners = runners
        self.worker = worker
        self.dispatcher = dispatcher
        self.reconciler = reconciler
        self._metrics = metrics
        self._broker = broker
        self._dead_queues = dead_queues
        self._replay = replay
        self._loops: list[Loop] = list(loops)
        if self.runners or self.worker is not None:
            self._loops.append(self._monitor)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def relay(self) -> OutboxRelay | None:
        return self._relay

    async def _monitor(self, stopping: asyncio.Event) -> None:
        """Queue gauges no message would update: dead letters, and lag back to 0 when idle."""
        m = self._metrics
        while not stopping.is_set():
            for queue in self._dead_queues:
                try:
                    m.dead_letters.labels(queue).set(await self._broker.queue_depth(queue))
                except Exception as exc:  # the broker may be down; try again next round
                    log.debug("dead-letter depth unavailable", extra={"error": repr(exc)})
            now = time.monotonic()
            for runner in self.runners:
                if now - runner.last_handled > MONITOR_SECONDS:
                    m.subscriber_lag.labels(runner.name).set(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), MONITOR_SECONDS)

    def add_loop(self, loop: Loop) -> None:
        """Run `loop(stopping)` beside the others."""
        self._loops.append(loop)

    async def start(self) -> None:
        # Queues exist before the relay publishes, so no event is routed to nowhere.
        for runner in self.runners:
            await runner.start()
        if self._replay is not None:
            await self._replay()
        loops = list(self._loops)
        if self._relay is not None:
            loops.append(self._relay.run)
        self._tasks = [asyncio.create_task(loop(self._stopping)) for loop in loops]

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
    settings.metrics_port (unset: no metrics server; the CLI fills in the role's default).
    An entry point: it calls the composition root."""
    from capstan.composition import build_background
    from capstan.container import build_container

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
    background = build_background(
        container,
        relay=relay,
        subscribers=subscribers or [],
        worker=worker,
        worker_queues=worker_queues,
        worker_concurrency=worker_concurrency,
        scheduler=scheduler,
    )
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


# Moved to the composition root (capstan.composition); still importable from here for callers
# outside the package's layers (the benchmarks) until they import them from there.
_MOVED = {"SUBSCRIBERS", "build_subscriber", "subscriber_names", "build_relay", "build_runner"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from capstan import composition

        return getattr(composition, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
