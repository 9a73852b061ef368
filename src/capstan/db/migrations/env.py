"""Alembic environment: always driven by capstan.db.migrate with an open connection."""

from __future__ import annotations

from alembic import context

from capstan.db.schema import Base, include_for_dialect

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `capstan migrate`, which passes a connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode rebuilds tables there.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_object=include_for_dialect(connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()
