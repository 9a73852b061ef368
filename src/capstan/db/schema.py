"""The relational schema. Migrations in `migrations/` must produce exactly this."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both dialects (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        # SQLite stores the wall time and drops the offset: store the UTC instant on both.
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, containment operators), JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY.
BigID = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # A disabled tenant's keys and sessions stop working; its data stays (0005_security).
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    # SHA-256 of the whole key; see docs/contracts/auth.md.
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # 0005_security: expiry (also the end of a rotated key's overlap) and the operator scope.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class AuthRevocation(Base):
    """A key that stops working at `effective_at`: revoked, expired by rotation, or its tenant
    disabled or deleted. Every API instance polls this table to drop its cached key and the
    key's sessions (auth/revocations.py); it outlives the key row, which a delete removes."""

    __tablename__ = "auth_revocations"
    __table_args__ = (Index("ix_auth_revocations_effective_at", "effective_at"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32))
    tenant_id: Mapped[str] = mapped_column(String(36))
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())


_analyzed: list[Any] = [None, None]  # the last (source, columns): one analysis per row


def _terms(column: str) -> Any:
    """An insert default that analyzes the row's own title, body and tags."""

    def default(context: Any) -> Any:
        from capstan.search.analysis import search_columns

        row = context.get_current_parameters()
        source = (row.get("title") or "", row.get("body") or "", tuple(row.get("tags") or ()))
        if _analyzed[0] != source:
            _analyzed[:] = [source, search_columns(*source)]
        return _analyzed[1][column]

    return default


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        Index("ix_documents_tenant_collection_id", "tenant_id", "collection", "id"),
        Index("ix_documents_tenant_id_id", "tenant_id", "id"),
        # Tag containment (`tags @> '["x"]'`) on PostgreSQL; SQLite scans json_each instead.
        Index("ix_documents_tags_gin", "tags", postgresql_using="gin").ddl_if(dialect="postgresql"),
    )

    # UUIDv7 text: time-ordered, so it doubles as the keyset pagination key.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    collection: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSONType)
    # The analyzed terms (capstan.search.analysis) the full-text index is built from
    # (migration 0006): set on insert from the row's values and on every ORM update below.
    terms_title: Mapped[str] = mapped_column(Text, default=_terms("terms_title"), server_default="")
    terms_tags: Mapped[str] = mapped_column(Text, default=_terms("terms_tags"), server_default="")
    terms_body: Mapped[str] = mapped_column(Text, default=_terms("terms_body"), server_default="")
    terms_norm: Mapped[float] = mapped_column(
        Float, default=_terms("terms_norm"), server_default="1"
    )
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The response body of GET /v1/documents/{id} for this version, rendered once by Python
    # when the row is written (capstan.documents.service.render, migration 0010): the API and
    # the Node gateway serve these bytes on a cache miss instead of serializing the row.
    # NULL only for rows written around Capstan (raw SQL); `capstan data check --fix` renders
    # them. Deferred: listing and locking a row do not read it.
    rendered: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)


@event.listens_for(Document, "before_update")
def _reanalyze(_mapper: Any, _connection: Any, doc: Document) -> None:
    """An ORM update of the title, body or tags re-analyzes the row's terms (Core `update()`
    statements must set `terms_*` themselves, with capstan.search.analysis.search_columns)."""
    from sqlalchemy import inspect as sa_inspect

    state = sa_inspect(doc)
    if any(state.attrs[name].history.has_changes() for name in ("title", "body", "tags")):
        from capstan.search.analysis import search_columns

        for name, value in search_columns(doc.title, doc.body, doc.tags).items():
            setattr(doc, name, value)


class OutboxEvent(Base):
    """An event committed with the change it announces; the relay publishes it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unpublished", "published_at", "id"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(36))
    routing_key: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200))
    # Which exchange the relay publishes to: "events" (topic, fan-out) or "tasks" (work queues).
    channel: Mapped[str] = mapped_column(String(20), server_default="events")
    envelope: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


# --- Search (migration 0003_search): full-text objects the database maintains itself, kept out
# of the ORM. PostgreSQL: the generated column documents.search_vector and its GIN index; SQLite:
# the FTS5 table documents_fts (and its shadow tables) and documents_fts_map, fed by triggers.
# Vectors (migration 0008, PostgreSQL with pgvector only): vector_chunks.embedding and the HNSW
# index per space that capstan.search.pgvector creates.
SEARCH_DERIVED_COLUMNS = {("documents", "search_vector"), ("vector_chunks", "embedding")}
SEARCH_DERIVED_INDEXES = {"ix_documents_search_vector"}
SEARCH_DERIVED_INDEX_PREFIX = "ix_vector_chunks_hnsw_"


class PgVector(UserDefinedType[Any]):
    """pgvector's `vector`, known to reflection (the schema check) by name; never written
    through the ORM (capstan.search.pgvector inserts it as text)."""

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "vector"


ischema_names["vector"] = PgVector
SEARCH_DERIVED_TABLE_PREFIX = "documents_fts"


def is_search_derived(name: str | None, type_: str, obj: Any) -> bool:
    if type_ == "table":
        return bool(name and name.startswith(SEARCH_DERIVED_TABLE_PREFIX))
    if type_ == "column":
        return (getattr(obj.table, "name", None), name) in SEARCH_DERIVED_COLUMNS
    return type_ == "index" and bool(
        name in SEARCH_DERIVED_INDEXES or (name and name.startswith(SEARCH_DERIVED_INDEX_PREFIX))
    )


def include_for_dialect(dialect: str) -> Any:
    """An Alembic `include_object` hook that skips objects declared for another dialect."""

    def include(obj: Any, _name: str | None, _type: str, _reflected: bool, _compare: Any) -> bool:
        if _reflected and is_search_derived(_name, _type, obj):
            return False
        ddl_if = getattr(obj, "_ddl_if", None)
        return ddl_if is None or ddl_if.dialect is None or ddl_if.dialect == dialect

    return include


class ProcessedEvent(Base):
    """Which subscriber has had which event's effect: the idempotency record."""

    __tablename__ = "processed_events"

    subscriber: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class CacheGeneration(Base):
    """One row: the document cache's durable generation (capstan.cache.generation)."""

    __tablename__ = "cache_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(BigInteger)


class AuditEntry(Base):
    """The append-only audit log; `seq` is the order of the events feed and realtime resume."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_tenant_seq", "tenant_id", "seq"),
        Index("ix_audit_log_tenant_type_seq", "tenant_id", "type", "seq"),
        Index("ix_audit_log_tenant_subject_seq", "tenant_id", "subject", "seq"),
    )

    seq: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(36))
    type: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200))
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    envelope: Mapped[dict[str, Any]] = mapped_column(JSONType)


class Webhook(Base):
    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_tenant_id", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    patterns: Mapped[list[str]] = mapped_column(JSONType)
    # Kept in clear: HMAC signing needs it. Shown to the user once, at creation.
    secret: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))  # active | disabled
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One event owed to one webhook; the dispatcher works through the due ones."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_webhook_event"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(36))
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(200))
    envelope: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20))  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempt"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float)


# --- Tasks (migration 0004_tasks) ----------------------------------------------------------


class Task(Base):
    """A unit of asynchronous work; the row is the truth, broker messages only wake workers."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_tasks_tenant_idempotency"),
        Index("ix_tasks_tenant_id", "tenant_id", "id"),
        Index("ix_tasks_due", "status", "dispatched_at", "run_at"),
        Index("ix_tasks_worker", "worker_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(100))
    priority: Mapped[int] = mapped_column(Integer)
    # queued | running | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(20))
    input: Mapped[dict[str, Any]] = mapped_column(JSONType)
    result: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    time_limit_seconds: Mapped[float] = mapped_column(Float)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    progress: Mapped[float] = mapped_column(Float)
    progress_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean)
    worker_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime())
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WorkerRecord(Base):
    """A worker process's heartbeat: what it runs and when it last proved it was alive."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(JSONType)
    concurrency: Mapped[int] = mapped_column(Integer)
    running: Mapped[list[str]] = mapped_column(JSONType)  # task ids
    loop_lag_seconds: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TaskEffect(Base):
    """Side effects a handler asked to commit together with its result: exactly once."""

    __tablename__ = "task_effects"

    task_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


# --- Vectors (migration 0008): the database-side vector store (capstan.search.vector_sql), one
# row per embedded document and one per chunk, in every space (embedding model + version).


class VectorDocument(Base):
    """A document's state in one vector space: its version (or its tombstone, `live` false,
    at the deleted version + 1) and the fields the structured filters test."""

    __tablename__ = "vector_documents"
    __table_args__ = (
        Index("ix_vector_documents_space_tenant_collection", "space", "tenant_id", "collection"),
    )

    space: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    document_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    live: Mapped[bool] = mapped_column(Boolean)
    collection: Mapped[str] = mapped_column(String(100))
    tags: Mapped[list[str]] = mapped_column(JSONType)
    # "key=value" texts (capstan.search.port.metadata_text), as the Elasticsearch index has.
    meta: Mapped[list[str]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class VectorGeneration(Base):
    """Bumped by every write of a tenant's vectors in a space: a process's cached copy of
    them (capstan.search.vector_sql) is current while the number has not moved."""

    __tablename__ = "vector_generations"

    space: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


class VectorChunk(Base):
    """One embedded chunk: its offsets, its text and its vector (float32, little-endian)."""

    __tablename__ = "vector_chunks"

    space: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    document_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_offset: Mapped[int] = mapped_column(Integer)
    end_offset: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class EmbeddingSpace(Base):
    """An embedding space (model + version + dimension): `live` answers queries, `building`
    is being filled by a re-embedding after a model change, `retired` was replaced."""

    __tablename__ = "embedding_spaces"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)  # capstan.search.vectors.Space
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    dimension: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(10))  # building | live | retired
    # Re-embedding progress: documents done of `total` (for `capstan embeddings status`).
    done: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
