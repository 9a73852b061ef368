"""documents.rendered: each document's response body, rendered once by Python when the row is
written, so the API and the Node gateway serve the same bytes without serializing the row on
a cache miss (docs/contracts/cache.md, "Entries").

Existing rows are rendered here with the current response model (a later change of the format
re-renders them in a migration of its own). A row that cannot be rendered (values stored
before the API refused them) stays NULL: `capstan data check --fix` repairs and renders it.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from pydantic import ValidationError

from capstan.documents.schemas import DocumentRead

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BATCH = 500

documents = sa.table(
    "documents",
    sa.column("id", sa.String),
    sa.column("collection", sa.String),
    sa.column("title", sa.Text),
    sa.column("body", sa.Text),
    sa.column("tags", sa.Text),
    sa.column("metadata", sa.Text),
    sa.column("version", sa.Integer),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("rendered", sa.LargeBinary),
)


def upgrade() -> None:
    op.add_column("documents", sa.Column("rendered", sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    d = documents.c
    # JSON read as text: decoded here, so a value json.loads refuses only leaves its row NULL.
    columns = [
        d.id,
        d.collection,
        d.title,
        d.body,
        sa.cast(d.tags, sa.Text),
        sa.cast(d.metadata, sa.Text),
        d.version,
        d.created_at,
        d.updated_at,
    ]
    after = ""
    while True:
        rows = bind.execute(
            sa.select(*columns).where(d.id > after).order_by(d.id).limit(BATCH)
        ).all()
        if not rows:
            return
        after = rows[-1][0]
        for row in rows:
            body = _render(*row)
            if body is not None:
                bind.execute(documents.update().where(d.id == row[0]).values(rendered=body))


def _render(
    doc_id: str,
    collection: str,
    title: str,
    body: str,
    tags: str,
    metadata: str,
    version: int,
    created_at: datetime | str,
    updated_at: datetime | str,
) -> bytes | None:
    try:
        read = DocumentRead(
            id=doc_id,
            collection=collection,
            title=title,
            body=body,
            tags=json.loads(tags),
            metadata=json.loads(metadata),
            version=version,
            created_at=_utc(created_at),
            updated_at=_utc(updated_at),
        )
        return read.model_dump_json().encode()
    except (ValueError, RecursionError, ValidationError):
        return None


def _utc(value: datetime | str) -> datetime:
    """As capstan's UTCDateTime reads it: SQLite hands back naive UTC wall times."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def downgrade() -> None:
    op.drop_column("documents", "rendered")
