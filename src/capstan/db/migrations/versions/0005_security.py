"""Key lifecycle: expiry and the admin scope on API keys, disabled tenants, revocations.

Revision ID: 0005
Revises: 0004_tasks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from capstan.db.schema import BigID

revision = "0005"
down_revision = "0004_tasks"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("disabled_at", TZ, nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", TZ, nullable=True))
        batch.add_column(
            sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "auth_revocations",
        sa.Column("id", BigID, autoincrement=True, nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("effective_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_auth_revocations"),
    )
    op.create_index("ix_auth_revocations_effective_at", "auth_revocations", ["effective_at"])


def downgrade() -> None:
    op.drop_table("auth_revocations")
    # Plain DROP COLUMN (PostgreSQL; SQLite >= 3.35): a batch copy of `tenants` on SQLite has
    # to DROP TABLE a table other tables reference, which SQLite refuses ("table is locked").
    op.drop_column("api_keys", "admin")
    op.drop_column("api_keys", "expires_at")
    op.drop_column("tenants", "disabled_at")
