"""Prometheus metrics. One registry per process (built by the container, never at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "capstan_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "capstan_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "capstan_http_requests_in_flight", "HTTP requests being answered now.", registry=r
        )
        self.cache_requests = Counter(
            "capstan_cache_requests_total",
            "Cache lookups by result: hit, miss, bypass (client asked) or degraded (cache down).",
            ["cache", "result"],
            registry=r,
        )
        self.cache_fills = Counter(
            "capstan_cache_fills_total",
            "Cache fills after a miss; refused means a newer version or tombstone was there, "
            "or the generation changed since the read.",
            ["cache", "outcome"],
            registry=r,
        )
        self.cache_invalidations = Counter(
            "capstan_cache_invalidations_total",
            "Invalidations after writes; deferred means the cache was down: the durable "
            "generation was bumped instead (and the cache subscriber retries the tombstone).",
            ["cache", "outcome"],
            registry=r,
        )
        self.cache_generation_syncs = Counter(
            "capstan_cache_generation_syncs_total",
            "Cache generation syncs: installed (from the database), failed (cache unreachable), "
            "lost (this process stops trusting the cache until the next install).",
            ["cache", "outcome"],
            registry=r,
        )
        self.cache_loads = Counter(
            "capstan_cache_loads_total",
            "Database reads made to fill the cache after a miss (one per key at a time).",
            ["cache"],
            registry=r,
        )
        self.db_reads_coalesced = Counter(
            "capstan_cache_coalesced_reads_total",
            "Misses that waited for another request's database read of the same key.",
            ["cache"],
            registry=r,
        )
        self.rate_limited = Counter(
            "capstan_rate_limited_total", "Requests refused with 429.", registry=r
        )
        # --- Backups (the scheduler role). The last-success gauge is registered by the scheduler
        # on first use (capstan.scheduler.jobs), so it is absent until a backup has succeeded.
        self.backup_last_success = Gauge(
            "capstan_backup_last_success_timestamp_seconds",
            "Unix time the last successful, verified backup finished.",
            registry=None,
        )
        self.backup_duration = Gauge(
            "capstan_backup_duration_seconds",
            "Duration of the last scheduled backup run (create, verify, prune).",
            registry=r,
        )
        self.backup_failures = Counter(
            "capstan_backup_failures_total", "Scheduled backup runs that failed.", registry=r
        )
        # --- Retention (the scheduler's retention job).
        self.retention_deleted = Counter(
            "capstan_retention_deleted_total",
            "Rows deleted by retention, per table.",
            ["table"],
            registry=r,
        )
        self.retention_last_run = Gauge(
            "capstan_retention_last_run_timestamp_seconds",
            "Unix time the last retention run finished.",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "capstan_outbox_backlog", "Committed events not yet published.", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "capstan_outbox_oldest_unsent_age_seconds",
            "Age of the oldest committed event not yet published (0 when none).",
            registry=r,
        )
        self.events_published = Counter(
            "capstan_events_published_total",
            "Messages published by the relay and confirmed by the broker, by event type "
            "(routing key; task.dispatch for worker messages).",
            ["type"],
            registry=r,
        )
        self.relay_batch_size = Histogram(
            "capstan_relay_batch_size",
            "Events per relay batch.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
            registry=r,
        )
        self.outbox_rings = Counter(
            "capstan_outbox_rings_total",
            "Notifications this process sent the relays after its commits, by result: sent, "
            "failed (the relays poll meanwhile).",
            ["result"],
            registry=r,
        )
        self.relay_failures = Counter(
            "capstan_relay_publish_failures_total",
            "Relay batches the broker did not confirm (retried).",
            registry=r,
        )
        self.events_consumed = Counter(
            "capstan_events_consumed_total",
            "Events handled by a subscriber, by outcome: processed, duplicate (already had its "
            "effect), retried, dead_lettered.",
            ["subscriber", "outcome"],
            registry=r,
        )
        self.subscriber_lag = Gauge(
            "capstan_subscriber_lag_seconds",
            "Time from an event's creation to its handling, for the last event handled.",
            ["subscriber"],
            registry=r,
        )
        self.subscriber_duration = Histogram(
            "capstan_subscriber_handle_duration_seconds",
            "Time a subscriber spends on one event.",
            ["subscriber"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.subscriber_batch = Histogram(
            "capstan_subscriber_batch_events",
            "Events an ordered subscriber applied in one transaction (batches of 2 or more).",
            ["subscriber"],
            buckets=(2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.event_latency = Histogram(
            "capstan_event_end_to_end_seconds",
            "Time from an event's creation to a subscriber having committed its effect.",
            ["subscriber"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.webhook_attempts = Counter(
            "capstan_webhook_attempts_total",
            "Webhook delivery attempts by outcome: succeeded, failed, refused (address blocked).",
            ["outcome"],
            registry=r,
        )
        self.indexer_pending = Counter(
            "capstan_indexer_events_total",
            "Document events the indexer subscriber received, by action.",
            ["action"],
            registry=r,
        )
        # Tasks (names are the contract in docs/alerts.md).
        self.tasks_total = Counter(
            "capstan_tasks_total",
            "Task state changes: queued, running, succeeded, failed, retrying, cancelled.",
            ["type", "state"],
            registry=r,
        )
        self.task_duration = Histogram(
            "capstan_task_duration_seconds",
            "Run time of a task attempt.",
            ["type"],
            buckets=(*LATENCY_BUCKETS, 30.0, 60.0, 300.0),
            registry=r,
        )
        self.task_queue_wait = Histogram(
            "capstan_task_queue_wait_seconds",
            "From when a task was due to when a worker started it.",
            ["type"],
            buckets=(*LATENCY_BUCKETS, 30.0, 60.0, 300.0),
            registry=r,
        )
        self.tasks_running = Gauge(
            "capstan_tasks_running", "Tasks running in this process.", registry=r
        )
        self.task_queue_depth = Gauge(
            "capstan_task_queue_depth", "Tasks waiting in each queue.", ["queue"], registry=r
        )
        self.task_oldest_queued_age = Gauge(
            "capstan_task_oldest_queued_age_seconds",
            "Age of the oldest due task not yet started, per queue (0 when empty).",
            ["queue"],
            registry=r,
        )
        self.tasks_reaped = Counter(
            "capstan_tasks_reaped_total",
            "Running tasks returned to the queue because their worker stopped beating.",
            registry=r,
        )
        self.tasks_redispatched = Counter(
            "capstan_tasks_redispatched_total",
            "Queued tasks dispatched again: dispatched long ago, never claimed, and their queue "
            "empty (their message was lost).",
            registry=r,
        )
        # Ephemeral signals (Redis Pub/Sub or in-process; docs/contracts/signals.md).
        self.signals_published = Counter(
            "capstan_signals_published_total",
            "Ephemeral signals handed to the signal bus, by type (task.progress).",
            ["type"],
            registry=r,
        )
        self.signals_dropped = Counter(
            "capstan_signals_dropped_total",
            "Ephemeral signals not delivered, by type and reason: unavailable (Redis down), "
            "error, slow_subscriber (an in-process subscriber's queue was full).",
            ["type", "reason"],
            registry=r,
        )
        self.task_progress_writes = Counter(
            "capstan_task_progress_writes_total",
            "Task rows updated with their latest progress (at most once a second per task).",
            registry=r,
        )
        self.worker_heartbeat = Gauge(
            "capstan_worker_last_heartbeat_timestamp_seconds",
            "Unix time of each worker's last heartbeat.",
            ["worker"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "capstan_dead_letters",
            "Messages held in each dead-letter queue.",
            ["queue"],
            registry=r,
        )
        self.dependency_up = Gauge(
            "capstan_dependency_up",
            "1 when the dependency answered the last readiness probe.",
            ["dependency"],
            registry=r,
        )
        # --- Search (issue 5): the query API, the indexer and the reconciler.
        self.search_requests = Counter(
            "capstan_search_requests_total",
            "Searches by engine (elasticsearch, postgres, sqlite, merged) and outcome.",
            ["engine", "outcome"],
            registry=r,
        )
        self.db_routed_reads = Counter(
            "capstan_db_routed_reads_total",
            "List and search reads by where they ran: replica or primary; lagging counts reads "
            "passed over to the primary because the replica had not caught up.",
            ["target"],
            registry=r,
        )
        self.search_duration = Histogram(
            "capstan_search_duration_seconds",
            "Search latency per engine and for the merged answer.",
            ["engine"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.search_index_operations = Counter(
            "capstan_search_index_operations_total",
            "Index operations by the indexer and reconciler: operation index|delete, outcome "
            "applied|stale (a newer version was indexed)|failed.",
            ["operation", "outcome"],
            registry=r,
        )
        self.search_index_batch_size = Histogram(
            "capstan_search_index_batch_size",
            "Documents per indexer bulk request.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.search_index_lag = Gauge(
            "capstan_search_index_lag_seconds",
            "Time from the oldest event of the last indexed batch to its bulk request's success.",
            registry=r,
        )
        self.search_drift = Gauge(
            "capstan_search_drift_documents",
            "Documents whose indexed version differed from the database's at the last "
            "reconciliation (changes younger than the grace window not counted).",
            registry=r,
        )
        self.embeddings_drift = Gauge(
            "capstan_embeddings_drift_documents",
            "Documents whose vectors were missing, stale or orphaned in the configured space at "
            "the last embeddings drift check (changes younger than the grace window not counted).",
            registry=r,
        )
        self.embeddings_rebuild_done = Gauge(
            "capstan_embeddings_rebuild_documents",
            "Documents re-embedded so far into a space being built after a model change, and "
            "how many there are to do.",
            ["kind"],
            registry=r,
        )
        self.search_repaired = Counter(
            "capstan_search_repaired_documents_total",
            "Documents the reconciler re-indexed or deleted.",
            ["operation"],
            registry=r,
        )
