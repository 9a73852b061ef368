"""The composition root, second half: each role's object graph built from a Container.

capstan.container builds the adapters and services; this module builds what runs on them
(relay, subscribers and their runners, the webhook dispatcher, the search reconciler, the
worker with its middleware, task maintenance, the scheduler, the event recovery operations)
and hands each part exactly what it uses. Entry points (CLI commands, the API app factory,
`capstan.roles.run_background`) call it; nothing below them imports it or the container.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

from capstan.container import Container
from capstan.embeddings.reconcile import EmbeddingsReconciler
from capstan.events.operations import EventFlow
from capstan.relay.relay import OutboxRelay
from capstan.relay.replay import replay_unhandled
from capstan.retry import Backoff
from capstan.roles import Background, Loop
from capstan.scheduler.core import Clock, Job, Scheduler, utc_now
from capstan.scheduler.jobs import BackupJob, job_lock
from capstan.scheduler.retention import RetentionJob
from capstan.search.elasticsearch import ElasticsearchEngine
from capstan.search.reconcile import Reconciler
from capstan.subscribers.audit import AuditSubscriber
from capstan.subscribers.cache import CacheSubscriber
from capstan.subscribers.embedder import EmbedderSubscriber
from capstan.subscribers.indexer import IndexerSubscriber
from capstan.subscribers.notifier import NotifierSubscriber
from capstan.subscribers.runtime import Subscriber, SubscriberRunner, queue_spec
from capstan.tasks.progress import ProgressReporter
from capstan.webhooks.dispatcher import WebhookDispatcher
from capstan.worker.maintenance import MaintenanceConfig, TaskMaintenance
from capstan.worker.middleware import Middleware, default_middleware
from capstan.worker.queues import task_queue_spec
from capstan.worker.worker import Worker, WorkerConfig

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
    "embedder": lambda c: EmbedderSubscriber(c.task_registry, c.settings, c.fast, c.wake_relays),
}


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


def build_relay(c: Container) -> OutboxRelay:
    s = c.settings
    return OutboxRelay(
        c.engine,
        c.db,
        c.broker,
        c.metrics,
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
        dialect=c.dialect,
        linger_seconds=s.outbox_linger_ms / 1000,
    )


def build_reconciler(c: Container) -> Reconciler | None:
    """The periodic search reconciler, or None (no Elasticsearch, or disabled)."""
    s = c.settings
    if not isinstance(c.search, ElasticsearchEngine) or s.search_reconcile_seconds <= 0:
        return None
    return Reconciler(
        c.search,
        c.db,
        c.metrics,
        interval=s.search_reconcile_seconds,
        grace_seconds=s.search_reconcile_grace_seconds,
    )


def worker_middleware(c: Container) -> list[Middleware]:
    s = c.settings
    return default_middleware(
        c.metrics, Backoff(s.task_retry_base_seconds, s.task_retry_max_seconds)
    )


def build_worker(
    c: Container,
    *,
    queues: list[str] | None = None,
    concurrency: int | None = None,
    middleware: Sequence[Middleware] | None = None,
    worker_id: str | None = None,
) -> Worker:
    s = c.settings
    return Worker(
        config=WorkerConfig(
            queues=queues or s.worker_queues,
            concurrency=concurrency or s.worker_concurrency,
            source=s.source,
            shutdown_grace_seconds=s.worker_shutdown_grace_seconds,
            heartbeat_seconds=s.worker_heartbeat_seconds,
            claim_max_errors=s.task_claim_max_errors,
        ),
        db=c.db,
        broker=c.broker,
        topology=c.topology,
        registry=c.task_registry,
        progress=partial(
            ProgressReporter,
            signals=c.signals,
            engine=c.engine,
            metrics=c.metrics,
            source=s.source,
            write_seconds=s.task_progress_write_seconds,
        ),
        middleware=worker_middleware(c) if middleware is None else middleware,
        wake=c.wake_relays,
        fast=c.fast,
        worker_id=worker_id,
    )


def build_embeddings_reconciler(c: Container) -> EmbeddingsReconciler | None:
    """The periodic embeddings drift check and model-change build, or None (embeddings off)."""
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


def build_maintenance(c: Container) -> TaskMaintenance:
    s = c.settings
    return TaskMaintenance(
        config=MaintenanceConfig(
            source=s.source,
            poll_seconds=s.task_poll_seconds,
            redispatch_seconds=s.task_redispatch_seconds,
            heartbeat_ttl_seconds=s.worker_heartbeat_ttl_seconds,
            queues=s.worker_queues,
        ),
        db=c.db,
        broker=c.broker,
        topology=c.topology,
        metrics=c.metrics,
        wake=c.wake_relays,
        dialect=c.dialect,
    )


def build_scheduler(c: Container, *, clock: Clock = utc_now) -> Scheduler:
    backup = BackupJob(c.settings, c.metrics, clock=clock)
    backup.init_gauge()
    jobs = [
        Job("backup", c.settings.backup_schedule, backup),
        Job("retention", c.settings.retention_schedule, RetentionJob(c.db, c.settings, c.metrics)),
    ]
    return Scheduler(jobs, job_lock(c.engine, c.dialect), clock=clock)


def event_flow(c: Container) -> EventFlow:
    """What the event recovery operations (replay, dead letters) use."""
    s = c.settings
    return EventFlow(
        db=c.db,
        broker=c.broker,
        topology=c.topology,
        queues={
            name: queue_spec(build_subscriber(c, name), s.event_retry_delays_ms, c.topology)
            for name in SUBSCRIBERS
        },
        enabled=list(s.subscribers),
    )


def build_background(
    c: Container,
    *,
    relay: bool,
    subscribers: list[str],
    worker: bool = False,
    worker_queues: list[str] | None = None,
    worker_concurrency: int | None = None,
    scheduler: bool = False,
) -> Background:
    """The background roles of this process, built and wired; `start()` runs them."""
    names = subscriber_names(c, subscribers)
    loops: list[Loop] = []
    # The dispatcher runs beside the notifier, which wakes it after each commit.
    dispatcher = WebhookDispatcher(c.db, c.metrics, c.settings) if "notifier" in names else None
    if dispatcher is not None:
        loops.append(dispatcher.run)
    # The search reconciler runs beside the indexer (when Elasticsearch is the index).
    reconciler = build_reconciler(c) if "indexer" in names else None
    if reconciler is not None:
        loops.append(reconciler.run)
    # The embeddings drift check runs beside the embedder subscriber.
    embeddings_reconciler = build_embeddings_reconciler(c) if "embedder" in names else None
    if embeddings_reconciler is not None:
        loops.append(embeddings_reconciler.run)
    runners = [
        build_runner(
            c,
            NotifierSubscriber(wake=dispatcher.wake, fast=c.fast)
            if n == "notifier" and dispatcher is not None
            else build_subscriber(c, n),
        )
        for n in names
    ]
    the_worker = (
        build_worker(c, queues=worker_queues, concurrency=worker_concurrency) if worker else None
    )
    if the_worker is not None:
        loops += [the_worker.run, build_maintenance(c).run]
    if scheduler:
        loops.append(build_scheduler(c).run)
    dead_queues = [r.spec.dead_letter_queue for r in runners]
    if the_worker is not None:
        dead_queues += [task_queue_spec(c.topology, q).dead_letter_queue for q in the_worker.queues]
    the_relay = build_relay(c) if relay else None

    async def replay() -> None:
        # The in-process broker lost its queues with the last process: give each subscriber
        # the events it has no record of (capstan.relay.replay), before anything new.
        days = c.settings.processed_events_retention_days
        since = datetime.now(UTC) - timedelta(days=days)
        await replay_unhandled(c.db, c.broker, [(r.name, r.spec) for r in runners], since=since)

    return Background(
        relay=the_relay,
        runners=runners,
        loops=loops,
        worker=the_worker,
        dispatcher=dispatcher,
        reconciler=reconciler,
        metrics=c.metrics,
        broker=c.broker,
        dead_queues=dead_queues,
        replay=replay if the_relay is not None and c.settings.broker_in_process else None,
    )
