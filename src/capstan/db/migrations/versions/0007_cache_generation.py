"""The document cache's durable generation: one row, bumped by a write whose cache invalidation
could not reach Redis (capstan.cache.generation, docs/contracts/cache.md).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "cache_generation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cache_generation"),
    )
    op.bulk_insert(table, [{"id": 1, "generation": 1}])


def downgrade() -> None:
    op.drop_table("cache_generation")
