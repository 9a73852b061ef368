"""The outbox no longer NOTIFYs from its insert trigger (PostgreSQL).

PostgreSQL serializes the commits of the transactions that sent a NOTIFY, through their WAL
flush: the trigger of 0002 made every write that staged an event wait in one database-wide
line. Writers now notify the relays after their commit, from a transaction of their own
(capstan.events.doorbell). A writer of an older version still running beside this one during
a rolling upgrade does not notify: the relays find its rows by their poll
(CAPSTAN_OUTBOX_POLL_SECONDS).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
        op.execute("DROP FUNCTION IF EXISTS capstan_outbox_notify()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION capstan_outbox_notify() RETURNS trigger AS $$
            BEGIN
              PERFORM pg_notify('capstan_outbox', '');
              RETURN NULL;
            END $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
            "FOR EACH STATEMENT EXECUTE FUNCTION capstan_outbox_notify()"
        )
