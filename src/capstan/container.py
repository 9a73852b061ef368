"""The composition root: builds every adapter and service from one Settings object.

Its second half, capstan.composition, builds each role's object graph (relay, subscribers,
worker, maintenance, reconciler, scheduler) from the container. Nothing else imports this
module at run time (tests/unit/test_composition_root.py): the rest of the code receives what it
uses, explicitly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from capstan.auth.failures import FailedAuthLimiter
from capstan.auth.lifecycle import Lifecycle
from capstan.auth.revocations import RevocationWatcher
from capstan.auth.service import Authenticator
from capstan.broker.port import Broker
from capstan.cache.generation import Generations
from capstan.cache.port import RateLimitedReader, RateLimiter, SessionStore, VersionedCache
from capstan.db.dialect import Dialect, dialect_for
from capstan.db.fastpath import FastPath
from capstan.db.replica import ReadRouter
from capstan.documents.cache import CacheAside
from capstan.documents.service import DocumentStore
from capstan.embeddings.wiring import Embeddings, build_embeddings
from capstan.events.doorbell import OUTBOX_CHANNEL, OutboxDoorbell
from capstan.events.topology import Topology
from capstan.observability.metrics import Metrics
from capstan.search.elasticsearch import ElasticsearchEngine
from capstan.search.port import SearchEngine
from capstan.search.postgres_fts import PostgresFts
from capstan.search.service import SearchService
from capstan.search.sql import DatabaseSearch
from capstan.search.sqlite_fts import SqliteFts
from capstan.search.vector_stores import VectorStores, build_vector_stores
from capstan.settings import Settings, host_list_as_params
from capstan.signals.port import SignalBus
from capstan.tasks.registry import TaskRegistry, load_plugins
from capstan.tasks.service import TaskService


@dataclass
class Container:
    settings: Settings
    metrics: Metrics
    engine: AsyncEngine
    # How this database differs from the other one (capstan.db.dialect), chosen once here.
    dialect: Dialect
    db: async_sessionmaker[AsyncSession]
    # List and search reads: on the replica when one is configured and current, else `engine`.
    reads: ReadRouter
    cache: VersionedCache
    sessions: SessionStore
    rate_limiter: RateLimiter
    # The rate limit and the cache read of GET /v1/documents/{id} in one round trip.
    limited_reader: RateLimitedReader
    broker: Broker
    search: SearchEngine
    auth: Authenticator
    lifecycle: Lifecycle  # tenant and key operations (admin API, `capstan keys|tenants`)
    auth_failures: FailedAuthLimiter
    revocations: RevocationWatcher
    documents: DocumentStore
    documents_cache: CacheAside  # the store's; the lean read route serves its hits
    # Set after each committed write: wakes an in-process relay without polling.
    outbox_wakeup: asyncio.Event
    # What every writer calls after a commit that staged outbox rows: sets `outbox_wakeup`
    # and rings the relays of other processes (capstan.events.doorbell).
    wake_relays: Callable[[], None]
    # The search flow: the database engine always, Elasticsearch when configured (`search`).
    searcher: SearchService
    # Vector stores (docs/embeddings.md): the database's always, Elasticsearch's when configured.
    vectors: VectorStores
    task_registry: TaskRegistry
    tasks: TaskService
    topology: Topology
    # Ephemeral signals (task progress): Redis Pub/Sub, or in-process when embedded.
    signals: SignalBus
    # PostgreSQL's single-statement hot paths; None on SQLite or when turned off.
    fast: FastPath | None = None
    # Chunking, embedding and vector search (issue 16); None when turned off.
    embeddings: Embeddings | None = None
    _closers: list[Any] = field(default_factory=list)

    async def start(self) -> None:
        await self.broker.connect()

    async def close(self) -> None:
        await self.broker.close()
        await self.search.close()
        await self.vectors.close()
        await self.signals.close()
        for closer in self._closers:
            await closer()
        if self.fast is not None:
            await self.fast.close()
        await self.reads.close()
        await self.engine.dispose()


def build_container(settings: Settings) -> Container:
    """Wire the process from settings; nothing connects until `start()`."""
    metrics = Metrics()
    dialect = dialect_for(settings.database_url)
    engine = dialect.create_engine(settings.database_url, pool_size=settings.database_pool_size)
    db = dialect.sessionmaker(engine)
    reads = ReadRouter(
        engine,
        dialect.create_engine(settings.database_read_url, pool_size=settings.database_pool_size)
        if settings.database_read_url
        else None,
        max_wait_seconds=settings.database_read_max_wait_seconds,
        retry_seconds=settings.database_read_retry_seconds,
        on_route=lambda target: metrics.db_routed_reads.labels(target).inc(),
    )
    closers: list[Any] = []
    fast = (
        dialect.fast_path(
            host_list_as_params(settings.database_url), max_size=settings.database_fast_pool_size
        )
        if settings.database_fast_path
        else None
    )

    cache: VersionedCache
    sessions: SessionStore
    rate_limiter: RateLimiter
    limited_reader: RateLimitedReader
    signals: SignalBus
    if settings.cache_url.startswith("memory"):
        from capstan.cache.memory import (
            MemoryCache,
            MemoryRateLimitedReader,
            MemoryRateLimiter,
            MemorySessionStore,
        )

        memory_cache, memory_limiter = MemoryCache(), MemoryRateLimiter()
        cache, sessions, rate_limiter = memory_cache, MemorySessionStore(), memory_limiter
        limited_reader = MemoryRateLimitedReader(memory_limiter, memory_cache)
        from capstan.signals.memory import MemorySignals

        signals = MemorySignals(metrics)
    else:
        from capstan.cache.redis import (
            RedisCache,
            RedisLink,
            RedisRateLimitedReader,
            RedisRateLimiter,
            RedisSessionStore,
        )

        link = RedisLink(
            settings.cache_url,
            timeout_seconds=settings.cache_timeout_seconds,
            retry_seconds=settings.cache_retry_seconds,
        )
        closers.append(link.close)
        cache, sessions, rate_limiter = (
            RedisCache(link),
            RedisSessionStore(link),
            RedisRateLimiter(link),
        )
        limited_reader = RedisRateLimitedReader(link)
        from capstan.signals.redis import RedisSignals

        signals = RedisSignals(link, settings.cache_url, metrics)

    broker: Broker
    if settings.broker_in_process:
        from capstan.broker.memory import MemoryBroker

        broker = MemoryBroker()
    else:
        from capstan.broker.rabbitmq import RabbitBroker

        broker = RabbitBroker(settings.broker_url, queue_type=settings.broker_queue_type)

    search: SearchEngine
    database_search: DatabaseSearch = dialect.choose(sqlite=SqliteFts, postgresql=PostgresFts)(
        engine, reads
    )
    index: ElasticsearchEngine | None = None
    if settings.search_url.startswith("http"):
        index = ElasticsearchEngine(
            settings.search_url,
            alias=settings.search_index,
            analyzer=settings.search_analyzer,
            shards=settings.search_shards,
            replicas=settings.search_replicas,
        )
    search = index if index is not None else database_search
    vectors = build_vector_stores(settings, engine, reads)
    embeddings = build_embeddings(settings, db, vectors)
    if embeddings is not None:
        closers.append(embeddings.pipeline.close)
    searcher = SearchService(
        database_search,
        index,
        metrics,
        timeout_seconds=settings.search_timeout_seconds,
        retry_seconds=settings.search_retry_seconds,
        vectors=None if embeddings is None else embeddings.search,
    )

    auth = Authenticator(
        db,
        sessions,
        session_ttl_seconds=settings.session_ttl_seconds,
        key_cache_seconds=settings.auth_cache_seconds,
    )
    aside = CacheAside(cache, metrics, Generations(db), ttl_seconds=settings.cache_ttl_seconds)
    outbox_wakeup = asyncio.Event()
    wake_relays = _relay_waker(settings, metrics, dialect, engine, fast, outbox_wakeup, closers)
    task_registry = TaskRegistry()
    topology = Topology(settings.broker_namespace)
    c = Container(
        settings=settings,
        metrics=metrics,
        engine=engine,
        dialect=dialect,
        db=db,
        reads=reads,
        cache=cache,
        sessions=sessions,
        rate_limiter=rate_limiter,
        limited_reader=limited_reader,
        broker=broker,
        search=search,
        vectors=vectors,
        auth=auth,
        lifecycle=Lifecycle(auth, cache, search, cache_ttl_seconds=settings.cache_ttl_seconds),
        auth_failures=FailedAuthLimiter(
            rate_limiter,
            per_minute=settings.auth_failures_per_minute,
            burst=settings.auth_failures_burst,
        ),
        revocations=RevocationWatcher(db, auth, poll_seconds=settings.auth_revocation_poll_seconds),
        documents=DocumentStore(
            db, dialect, aside, settings.source, on_commit=wake_relays, reads=reads, fast=fast
        ),
        documents_cache=aside,
        outbox_wakeup=outbox_wakeup,
        wake_relays=wake_relays,
        searcher=searcher,
        task_registry=task_registry,
        tasks=TaskService(
            db,
            task_registry,
            settings,
            on_commit=wake_relays,
            # Direct dispatch only onto a broker other processes share: an in-memory queue
            # would keep the task from the `capstan dev` server that shares this data dir;
            # the outbox reaches it (and is as quick in one process: the relay wakes at once).
            broker=None if settings.broker_in_process else broker,
            topology=topology,
            fast=fast,
        ),
        topology=topology,
        fast=fast,
        embeddings=embeddings,
        signals=signals,
        _closers=closers,
    )
    register_task_types(c)
    return c


def register_task_types(c: Container) -> None:
    """Built-in types (given the services they use), test types when enabled, then every
    installed plugin (plugin API v1: they get a TaskContext, never the container)."""
    from capstan.search.reindex import Progress, ReindexReport, reindex
    from capstan.tasks.handlers import documents, testing, text

    async def reindex_here(progress: Progress | None, keep_old: bool) -> ReindexReport:
        return await reindex(c.search, c.db, progress, keep_old=keep_old)

    text.register(c.task_registry)
    documents.register(
        c.task_registry,
        documents.DocumentServices(documents=c.documents, reindex=reindex_here, db=c.db),
    )
    if c.embeddings is not None:
        from capstan.tasks.handlers import embeddings as embedding_handlers

        pipeline = c.embeddings.pipeline
        embedding_handlers.register(c.task_registry, lambda: pipeline)
    if c.settings.tasks_enable_test_handlers:
        testing.register(c.task_registry)
    load_plugins(c.task_registry)


def _relay_waker(
    settings: Settings,
    metrics: Metrics,
    dialect: Dialect,
    engine: AsyncEngine,
    fast: FastPath | None,
    wakeup: asyncio.Event,
    closers: list[Any],
) -> Callable[[], None]:
    notify = dialect.notifier(engine, OUTBOX_CHANNEL, fast)
    if notify is None:  # no server notifications: the relay that matters is in this process
        return wakeup.set
    rings = metrics.outbox_rings
    doorbell = OutboxDoorbell(
        notify,
        spacing=settings.outbox_linger_ms / 1000,
        counted=lambda result: rings.labels(result).inc(),
    )
    closers.append(doorbell.close)

    def wake_relays() -> None:
        wakeup.set()
        doorbell.ring()

    return wake_relays
