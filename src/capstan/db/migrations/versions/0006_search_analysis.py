"""Search analysis: documents keep their analyzed terms (`terms_title`, `terms_tags`,
`terms_body`, and the length factor `terms_norm`, written by the application with
capstan.search.analysis), and the database's
full-text index is built from those terms instead of the raw text, so PostgreSQL, SQLite and
Elasticsearch match the same tokens.

Revision ID: 0006
Revises: 0004_tasks (needs 0003_search)
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from capstan.search.analysis import search_columns

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = "0003_search"

TERMS = ("terms_title", "terms_tags", "terms_body")
PG_VECTOR = (
    "setweight(to_tsvector('simple'::regconfig, terms_title), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, terms_tags), 'B') || "
    "setweight(to_tsvector('simple'::regconfig, terms_body), 'D')"
)
OLD_PG_VECTOR = (
    "setweight(to_tsvector('simple'::regconfig, coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, left(coalesce(body, ''), 100000)), 'B')"
)
PAGE = 500


def _backfill() -> None:
    """Analyze the documents written before this migration (keyset pages by id)."""
    bind = op.get_bind()
    docs = sa.table(
        "documents",
        sa.column("id", sa.String),
        sa.column("title", sa.Text),
        sa.column("body", sa.Text),
        sa.column("tags", sa.JSON),
        *(sa.column(name, sa.Text) for name in TERMS),
        sa.column("terms_norm", sa.Float),
    )
    last = ""
    while True:
        rows = bind.execute(
            sa.select(docs.c.id, docs.c.title, docs.c.body, docs.c.tags)
            .where(docs.c.id > last)
            .order_by(docs.c.id)
            .limit(PAGE)
        ).all()
        if not rows:
            return
        for row in rows:
            tags: Any = row.tags
            if isinstance(tags, str):  # SQLite hands JSON back as text through a bare table()
                import json

                tags = json.loads(tags)
            values = search_columns(row.title or "", row.body or "", tags or [])
            bind.execute(docs.update().where(docs.c.id == row.id).values(**values))
        last = rows[-1].id


def upgrade() -> None:
    for name in TERMS:
        op.add_column("documents", sa.Column(name, sa.Text(), nullable=False, server_default=""))
    op.add_column(
        "documents", sa.Column("terms_norm", sa.Float(), nullable=False, server_default="1")
    )
    _backfill()
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_documents_search_vector")
        op.execute("ALTER TABLE documents DROP COLUMN IF EXISTS search_vector")
        op.execute(
            f"ALTER TABLE documents ADD COLUMN search_vector tsvector "
            f"GENERATED ALWAYS AS ({PG_VECTOR}) STORED"
        )
        op.execute("CREATE INDEX ix_documents_search_vector ON documents USING gin (search_vector)")
        return
    _sqlite_fts(("title", "tags", "body"), TERMS)


def _sqlite_fts(columns: tuple[str, ...], sources: tuple[str, ...]) -> None:
    """(Re)create the FTS5 table over `sources` and the triggers that keep it."""
    for trigger in ("documents_fts_insert", "documents_fts_update", "documents_fts_delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS documents_fts")
    cols = ", ".join(columns)
    news = ", ".join(f"new.{s}" for s in sources)
    sets = ", ".join(f"{c} = new.{s}" for c, s in zip(columns, sources, strict=True))
    op.execute(f"CREATE VIRTUAL TABLE documents_fts USING fts5({cols}, tokenize='unicode61')")
    op.execute(
        f"""
        CREATE TRIGGER documents_fts_insert AFTER INSERT ON documents BEGIN
          INSERT INTO documents_fts_map (doc_id) VALUES (new.id);
          INSERT INTO documents_fts (rowid, {cols})
            VALUES ((SELECT id FROM documents_fts_map WHERE doc_id = new.id), {news});
        END
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER documents_fts_update AFTER UPDATE OF {", ".join(sources)} ON documents
        BEGIN
          UPDATE documents_fts SET {sets}
            WHERE rowid = (SELECT id FROM documents_fts_map WHERE doc_id = old.id);
        END
        """
    )
    op.execute(
        """
        CREATE TRIGGER documents_fts_delete AFTER DELETE ON documents BEGIN
          DELETE FROM documents_fts
            WHERE rowid = (SELECT id FROM documents_fts_map WHERE doc_id = old.id);
          DELETE FROM documents_fts_map WHERE doc_id = old.id;
        END
        """
    )
    olds = ", ".join(f"d.{s}" for s in sources)
    op.execute(
        f"INSERT INTO documents_fts (rowid, {cols}) "
        f"SELECT m.id, {olds} FROM documents d JOIN documents_fts_map m ON m.doc_id = d.id"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_documents_search_vector")
        op.execute("ALTER TABLE documents DROP COLUMN IF EXISTS search_vector")
        op.execute(
            f"ALTER TABLE documents ADD COLUMN search_vector tsvector "
            f"GENERATED ALWAYS AS ({OLD_PG_VECTOR}) STORED"
        )
        op.execute("CREATE INDEX ix_documents_search_vector ON documents USING gin (search_vector)")
    else:
        # The triggers name the terms columns: move the FTS table back before dropping them.
        _sqlite_fts(("title", "body"), ("title", "body"))
    # Plain DROP COLUMN (SQLite >= 3.35): a batch table copy would drop the triggers.
    for name in (*TERMS, "terms_norm"):
        op.execute(f"ALTER TABLE documents DROP COLUMN {name}")
