"""Vectors: the database-side vector store (capstan.search.vector_sql): `vector_documents`
(each document's version or tombstone per space, with the fields the filters test) and
`vector_chunks` (each chunk's text and float32 vector) and `vector_generations` (bumped by
every write of a tenant's vectors in a space, so processes know when their cache is stale).
The same tables on both dialects: SQLite scores them exactly with numpy after the filters ran
in SQL (docs/embeddings.md).

PostgreSQL with pgvector available (scripts/services installs it): `CREATE EXTENSION vector`
and a `vector_chunks.embedding vector` column, which capstan.search.pgvector fills and indexes
(HNSW per space). Without the extension files, or without the right to create it (it is not a
trusted extension: a superuser must, or must have created it already), the migration goes on
without them and the database store scores the `vector` bytes instead.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from capstan.db.schema import JSONType, UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)


def _pgvector() -> None:
    bind = op.get_bind()
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    if available is None:
        log.warning("pgvector is not installed: vectors are scored without it (slower)")
        return
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sa.exc.DBAPIError as exc:
        log.warning("CREATE EXTENSION vector failed (%s): vectors are scored without it", exc)
        return
    op.execute("ALTER TABLE vector_chunks ADD COLUMN embedding vector")


def upgrade() -> None:
    op.create_table(
        "vector_documents",
        sa.Column("space", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("document_id", sa.String(36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("live", sa.Boolean(), nullable=False),
        sa.Column("collection", sa.String(100), nullable=False),
        sa.Column("tags", JSONType, nullable=False),
        sa.Column("meta", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("space", "tenant_id", "document_id", name="pk_vector_documents"),
    )
    op.create_index(
        "ix_vector_documents_space_tenant_collection",
        "vector_documents",
        ["space", "tenant_id", "collection"],
    )
    op.create_table(
        "vector_chunks",
        sa.Column("space", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("document_id", sa.String(36), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("start_offset", sa.Integer(), nullable=False),
        sa.Column("end_offset", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint(
            "space", "tenant_id", "document_id", "chunk", name="pk_vector_chunks"
        ),
    )
    op.create_table(
        "vector_generations",
        sa.Column("space", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("space", "tenant_id", name="pk_vector_generations"),
    )
    if op.get_bind().dialect.name == "postgresql":
        _pgvector()


def downgrade() -> None:
    op.drop_table("vector_generations")
    op.drop_table("vector_chunks")
    op.drop_index("ix_vector_documents_space_tenant_collection", table_name="vector_documents")
    op.drop_table("vector_documents")
