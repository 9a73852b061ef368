"""The document write path's hot statement on PostgreSQL: a create and its `document.created`
event in ONE statement (see capstan.db.fastpath), as capstan.tasks.statements does for tasks.

The ORM path in DocumentStore does the same on SQLite; both analyze the row's search terms with
capstan.search.analysis.search_columns and write the envelope capstan.events.outbox builds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect

from capstan.db.schema import Document
from capstan.events.outbox import OUTBOX_INSERT, routing_key

# (column, attribute): the `metadata` column is the `metadata_` attribute.
_COLUMNS = [
    (c.name, inspect(Document).get_property_by_column(c).key) for c in Document.__table__.columns
]
_N = len(_COLUMNS)

# $1..$N the document's columns, then the outbox row: event id, routing key, subject,
# envelope, created_at. Nothing is written unless both rows are.
CREATE = f"""
WITH created AS (
  INSERT INTO documents ({", ".join(name for name, _ in _COLUMNS)})
  VALUES ({", ".join(f"${i + 1}" for i in range(_N))})
  RETURNING tenant_id
)
{OUTBOX_INSERT}
SELECT ${_N + 1}, c.tenant_id, ${_N + 2}, ${_N + 3}, 'events', ${_N + 4}::jsonb, ${_N + 5}
  FROM created c
"""


def create_args(doc: Document, event: dict[str, Any]) -> list[Any]:
    """The CREATE statement's arguments for a new (transient, analyzed) document and its
    event envelope."""
    return [
        *(getattr(doc, attribute) for _, attribute in _COLUMNS),
        event["id"],
        routing_key(event),
        event["subject"],
        event,
        doc.created_at,
    ]
