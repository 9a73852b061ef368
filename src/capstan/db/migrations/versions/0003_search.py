"""Search: PostgreSQL full text (generated tsvector + GIN) or SQLite FTS5 (kept by triggers).

Revision ID: 0003_search
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003_search"
down_revision = "0002"
branch_labels = None
depends_on = None

# The first 100,000 characters of the body: a tsvector is limited to 1 MB, and the fallback
# only needs to find documents, not to rank every word of a huge one.
PG_VECTOR = (
    "setweight(to_tsvector('simple'::regconfig, coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, left(coalesce(body, ''), 100000)), 'B')"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE documents ADD COLUMN search_vector tsvector "
            f"GENERATED ALWAYS AS ({PG_VECTOR}) STORED"
        )
        op.execute("CREATE INDEX ix_documents_search_vector ON documents USING gin (search_vector)")
        return
    # SQLite: FTS5 rows keyed by a stable integer (documents has a text key, and VACUUM may
    # renumber implicit rowids), maintained by triggers in the writing transaction.
    op.execute(
        "CREATE TABLE documents_fts_map ("
        "id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id VARCHAR(36) NOT NULL UNIQUE)"
    )
    op.execute("CREATE VIRTUAL TABLE documents_fts USING fts5(title, body, tokenize='unicode61')")
    op.execute(
        """
        CREATE TRIGGER documents_fts_insert AFTER INSERT ON documents BEGIN
          INSERT INTO documents_fts_map (doc_id) VALUES (new.id);
          INSERT INTO documents_fts (rowid, title, body)
            VALUES ((SELECT id FROM documents_fts_map WHERE doc_id = new.id), new.title, new.body);
        END
        """
    )
    op.execute(
        """
        CREATE TRIGGER documents_fts_update AFTER UPDATE OF title, body ON documents BEGIN
          UPDATE documents_fts SET title = new.title, body = new.body
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
    # Documents written before this migration.
    op.execute("INSERT INTO documents_fts_map (doc_id) SELECT id FROM documents ORDER BY id")
    op.execute(
        "INSERT INTO documents_fts (rowid, title, body) "
        "SELECT m.id, d.title, d.body FROM documents d JOIN documents_fts_map m ON m.doc_id = d.id"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_documents_search_vector")
        op.execute("ALTER TABLE documents DROP COLUMN IF EXISTS search_vector")
        return
    for trigger in ("documents_fts_insert", "documents_fts_update", "documents_fts_delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS documents_fts")
    op.execute("DROP TABLE IF EXISTS documents_fts_map")
