"""The one settings object: every process and CLI command reads it from `CAPSTAN_*`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from capstan.datadir import default_data_dir


class Settings(BaseSettings):
    """Capstan's configuration; backends are chosen by URL (embedded by default)."""

    model_config = SettingsConfigDict(env_prefix="CAPSTAN_", env_file=None, extra="ignore")

    # Unset: the nearest `.capstan` here or above, else the last `capstan dev`'s (datadir.py).
    data_dir: Path = Field(default_factory=default_data_dir)
    # Empty means "embedded": a SQLite file inside data_dir.
    database_url: str = ""
    # Connections per process (as many again may overflow under bursts).
    database_pool_size: int = Field(20, ge=1, le=500)
    # PostgreSQL only: hot paths (claim, finish, submit, relay, audit) as single statements on a
    # small asyncpg pool of their own (capstan.db.fastpath); off runs the portable ORM code.
    database_fast_path: bool = True
    database_fast_pool_size: int = Field(10, ge=1, le=500)
    # A streaming replica for list and search reads (docs/deployment.md, "Scale-out"). Empty:
    # every read goes to the primary. A read waits this long for the replica to replay past
    # the primary's position, then goes to the primary; an unreachable replica is skipped for
    # database_read_retry_seconds.
    database_read_url: str = ""
    database_read_max_wait_seconds: float = Field(0.05, ge=0)
    database_read_retry_seconds: float = Field(5.0, ge=0)
    cache_url: str = "memory://"
    # amqp:// URL; a cluster lists every node (capstan.node_urls), tried in turn.
    broker_url: str = "memory://"
    # quorum: every durable queue replicated across the cluster (no broker-side priorities
    # before RabbitMQ 4.0). Changing it needs the migration in docs/deployment.md.
    broker_queue_type: Literal["classic", "quorum"] = "classic"
    # "sqlite", or Elasticsearch: http://host:9200, or several nodes (capstan.node_urls).
    search_url: str = "sqlite"
    search_analyzer: str = "standard"

    host: str = "127.0.0.1"
    port: int = 8000
    source: str = "capstan"  # CloudEvents `source` and the name this instance reports

    cache_ttl_seconds: int = Field(300, ge=1)
    # How often each API process installs the durable cache generation in Redis (and so how
    # long a bump by a process cut off from Redis alone can take to reach the others).
    cache_generation_poll_seconds: float = Field(1.0, gt=0)
    # How long a cache outage is assumed to last before Redis is tried again.
    cache_retry_seconds: float = Field(1.0, ge=0)
    cache_timeout_seconds: float = Field(0.5, gt=0)
    session_ttl_seconds: int = Field(3600, ge=60)
    # Verified API keys are remembered in-process this long; a revocation reaches every
    # instance's cache and the key's sessions within auth_revocation_poll_seconds.
    auth_cache_seconds: float = Field(30.0, ge=0)
    auth_revocation_poll_seconds: float = Field(2.0, gt=0)
    rate_limit_per_minute: int = Field(1200, ge=1)
    rate_limit_burst: int = Field(200, ge=1)
    # Failed authentications per client address (then 429 for that address, whatever it sends).
    auth_failures_per_minute: int = Field(30, ge=1)
    auth_failures_burst: int = Field(10, ge=1)

    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_title_chars: int = Field(1000, ge=1)
    max_body_chars: int = Field(500_000, ge=1)
    max_tags: int = Field(64, ge=0)
    max_page_size: int = Field(200, ge=1)

    # Events: outbox relay and subscribers. The namespace prefixes every exchange and queue.
    broker_namespace: str = Field("capstan", pattern=r"^[a-z0-9][a-z0-9_.\-]*$")
    outbox_batch_size: int = Field(500, ge=1, le=10_000)
    outbox_poll_seconds: float = Field(1.0, gt=0)
    # Under load the relay lets a batch gather the commits of this window (0: publish each
    # wakeup at once); an idle relay never waits. See docs/services.md ("Relay").
    outbox_linger_ms: float = Field(5.0, ge=0, le=1000)
    outbox_retention_hours: float = Field(24.0, ge=0)
    subscribers: list[str] = ["indexer", "cache", "audit", "notifier", "embedder"]
    # In-flight events per subscriber; each holds a database connection while it is handled,
    # so subscribers x prefetch should stay within database_pool_size.
    subscriber_prefetch: int = Field(8, ge=1)
    # Most events an ordered subscriber (audit) applies in one transaction; one connection.
    subscriber_ordered_batch: int = Field(64, ge=1)
    event_max_attempts: int = Field(5, ge=1)
    event_retry_delays_ms: list[int] = [1000, 5000, 30000, 120000]
    processed_events_retention_days: float = Field(7.0, gt=0)

    # Retention (the scheduler's `retention` job, docs/security.md): rows older than this are
    # deleted, in batches; 0 keeps them forever. An event redelivered after its
    # processed_events row is pruned would be applied again, so keep that one above any
    # redelivery window.
    retention_schedule: str = "30 3 * * *"  # 5-field cron, UTC
    retention_batch_size: int = Field(5000, ge=1, le=100_000)
    audit_retention_days: float = Field(365.0, ge=0)
    webhook_delivery_retention_days: float = Field(30.0, ge=0)  # finished deliveries only
    task_retention_days: float = Field(30.0, ge=0)  # finished tasks only

    # Webhooks (the notifier subscriber).
    webhook_timeout_seconds: float = Field(5.0, gt=0)
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_retry_base_seconds: float = Field(2.0, gt=0)
    webhook_disable_after_failures: int = Field(20, ge=1)
    # Tests and single-host setups deliver to loopback/private receivers; off in production.
    webhook_allow_private: bool = False

    # Tasks and workers.
    task_default_max_attempts: int = Field(3, ge=1, le=100)
    task_default_time_limit_seconds: float = Field(300.0, gt=0)
    task_retry_base_seconds: float = Field(1.0, gt=0)
    task_retry_max_seconds: float = Field(300.0, gt=0)
    task_poll_seconds: float = Field(0.5, gt=0)  # promoter/reaper cadence
    # A queued task dispatched this long ago, never claimed, with its queue empty, lost its
    # message: dispatch it again (a duplicate message is harmless, claims are conditional).
    task_redispatch_seconds: float = Field(600.0, gt=0)
    # A claim failing with anything but "database down" this many times in a row (a bug, a
    # schema out of step) dead-letters its message instead of retrying it every second forever.
    task_claim_max_errors: int = Field(10, ge=1, le=1000)
    worker_concurrency: int = Field(8, ge=1, le=1000)
    worker_queues: list[str] = ["default"]
    worker_heartbeat_seconds: float = Field(2.0, gt=0)
    # A running task whose worker has not beaten for this long goes back to the queue.
    worker_heartbeat_ttl_seconds: float = Field(15.0, gt=0)
    worker_shutdown_grace_seconds: float = Field(10.0, ge=0)
    # A running task's row keeps its latest progress, written at most this often (every tick
    # is also published as an ephemeral signal; docs/contracts/signals.md). 0: every tick.
    task_progress_write_seconds: float = Field(1.0, ge=0)
    tasks_enable_test_handlers: bool = False

    # Search (issue 5; docs/search.md). search_index is the read alias; indices are <alias>-<ms>.
    search_index: str = Field("capstan-documents", pattern=r"^[a-z0-9][a-z0-9_.\-]*$")
    search_timeout_seconds: float = Field(1.0, gt=0)  # then PostgreSQL FTS answers (degraded)
    search_retry_seconds: float = Field(2.0, ge=0)  # Elasticsearch not retried for this long
    search_max_query_chars: int = Field(500, ge=1)
    search_max_page_size: int = Field(100, ge=1)
    # POST /v1/search and /v1/retrieve take the query in a JSON body: longer than a URL allows.
    search_max_body_query_chars: int = Field(4000, ge=1)
    search_shards: int = Field(1, ge=1)
    search_replicas: int = Field(0, ge=0)
    search_batch_size: int = Field(500, ge=1, le=10_000)
    search_batch_linger_ms: float = Field(5.0, ge=0)
    # The indexer outlasts Elasticsearch outages by retrying (the reconciler is the backstop).
    search_indexer_max_attempts: int = Field(50, ge=1)
    search_reconcile_seconds: float = Field(300.0, ge=0)  # 0: no periodic reconciliation
    search_reconcile_grace_seconds: float = Field(30.0, ge=0)

    # Embeddings (issue 16; docs/embeddings.md). Empty URL: the offline model shipped with
    # Capstan (capstan.embeddings.static). Else an OpenAI-compatible endpoint: the base URL
    # (http://host:port/v1) or the full .../embeddings URL, with the model name it serves.
    embeddings_url: str = Field("", pattern=r"^$|^https?://")
    # Off: no embeddings.document tasks, no semantic or hybrid search (keyword only).
    embeddings_enabled: bool = True
    # The drift check (embeddings/reconcile.py), beside the embedder subscriber; 0: never.
    embeddings_reconcile_seconds: float = Field(300.0, ge=0)
    embeddings_reconcile_grace_seconds: float = Field(30.0, ge=0)
    embeddings_model: str = ""
    embeddings_api_key: SecretStr = SecretStr("")
    # Unset: asked of the endpoint at start. Every answer is checked against it.
    embeddings_dimension: int | None = Field(None, ge=1, le=65_536)
    # Bump it when the endpoint's weights change under the same model name: vectors of another
    # version are stale.
    embeddings_version: str = Field("1", min_length=1, max_length=64)
    embeddings_timeout_seconds: float = Field(30.0, gt=0)
    embeddings_max_attempts: int = Field(5, ge=1, le=50)  # 429, 5xx, timeouts, refused
    embeddings_retry_base_seconds: float = Field(0.5, ge=0)
    embeddings_batch_size: int = Field(64, ge=1, le=2048)  # texts per request
    # Chunks: at most chunk_size units (characters, or tokens of the offline model's
    # tokenizer), consecutive chunks sharing at most chunk_overlap units of whole sentences.
    embeddings_chunk_unit: Literal["chars", "tokens"] = "chars"
    embeddings_chunk_size: int = Field(1000, ge=16, le=100_000)
    embeddings_chunk_overlap: int = Field(150, ge=0)

    # Port for /metrics and /healthz of roles other than the API; 0 turns it off. Unset: each
    # role its own (worker 9401, relay 9402, subscriber 9403, scheduler 9404; roles.py).
    metrics_port: int | None = Field(None, ge=0, le=65535)

    # Backups (`capstan backup`, and the scheduler role). Empty backup_dir means data_dir/backups.
    backup_dir: Path | None = None
    backup_schedule: str = "0 2 * * *"  # 5-field cron, UTC
    backup_retention_days: float = Field(7.0, gt=0)
    # RabbitMQ management API (http://user:pass@host:15672); definitions are skipped when unset.
    broker_management_url: str = ""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # JSON lines; unset: JSON unless stderr is a terminal (then readable, coloured lines).
    log_json: bool | None = None

    @model_validator(mode="after")
    def _check_embeddings(self) -> Settings:
        if self.embeddings_url and not self.embeddings_model:
            raise ValueError("embeddings_url needs embeddings_model (the model name it serves)")
        if self.embeddings_chunk_overlap >= self.embeddings_chunk_size:
            raise ValueError("embeddings_chunk_overlap must be smaller than embeddings_chunk_size")
        return self

    @model_validator(mode="after")
    def _fill_database_url(self) -> Settings:
        from capstan.db.dialect import dialect_for

        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'capstan.db'}"
        dialect = dialect_for(self.database_url)  # an unsupported scheme fails here, named
        if self.database_read_url and not (
            dialect.read_replicas and dialect_for(self.database_read_url) is dialect
        ):
            raise ValueError("database_read_url needs PostgreSQL for both it and database_url")
        return self

    @property
    def embedded(self) -> bool:
        """True when every backend is the in-process one."""
        from capstan.db.dialect import dialect_for

        return dialect_for(self.database_url).is_file and self.cache_url.startswith("memory")

    @property
    def broker_in_process(self) -> bool:
        """The in-process broker (`memory://`): shared by nothing, kept by nothing on a crash."""
        return self.broker_url.startswith("memory")

    @property
    def async_database_url(self) -> str:
        """The database URL with the async driver SQLAlchemy needs."""
        return to_async_url(self.database_url)


def to_async_url(url: str) -> str:
    """Map `postgresql://` and `sqlite://` URLs onto their asyncio drivers."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return _multi_host(driver + url[len(plain) :])
    return url


def _multi_host(url: str) -> str:
    """libpq's host list (`user@h1:5432,h2:5432/db?target_session_attrs=read-write`, what
    pg_dump and psql read) in the form SQLAlchemy hands to asyncpg (`user@/db?host=h1:5432
    &host=h2:5432&...`): asyncpg tries the hosts in turn and, with target_session_attrs,
    keeps the one that is the primary (docs/deployment.md, "Promoting a replica")."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url
    query = [("host", h) for h in hosts.split(",") if h] + parse_qsl(parts.query)
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}", query=urlencode(query)))


def host_list_as_params(url: str) -> str:
    """A libpq host list as `host=` and `port=` parameters (`u:p@/db?host=h1,h2&port=p1,p2`):
    the form that both SQLAlchemy's URL parser and asyncpg's DSN parser read as several hosts
    (capstan.db.fastpath's pool). Other URLs are returned unchanged."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url
    pairs = [h.rsplit(":", 1) if ":" in h else [h, "5432"] for h in hosts.split(",") if h]
    query = [
        ("host", ",".join(h for h, _ in pairs)),
        ("port", ",".join(p for _, p in pairs)),
        *parse_qsl(parts.query),
    ]
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}", query=urlencode(query)))
