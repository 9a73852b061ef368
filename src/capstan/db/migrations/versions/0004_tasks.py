"""Tasks, worker heartbeats, task effects; the outbox learns which exchange a row goes to.

Revision ID: 0004_tasks
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from capstan.db.schema import JSONType

revision = "0004_tasks"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(
            sa.Column("channel", sa.String(20), nullable=False, server_default="events")
        )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("input", JSONType, nullable=False),
        sa.Column("result", JSONType, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("time_limit_seconds", sa.Float(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("progress_message", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker_id", sa.String(100), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("run_at", TZ, nullable=False),
        sa.Column("dispatched_at", TZ, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_tasks_tenant_id_tenants", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_tasks_tenant_idempotency"),
    )
    op.create_index("ix_tasks_tenant_id", "tasks", ["tenant_id", "id"])
    op.create_index("ix_tasks_due", "tasks", ["status", "dispatched_at", "run_at"])
    op.create_index("ix_tasks_worker", "tasks", ["worker_id", "status"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("hostname", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", JSONType, nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("running", JSONType, nullable=False),
        sa.Column("loop_lag_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("last_heartbeat_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
    )
    op.create_table(
        "task_effects",
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("value", JSONType, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("task_id", "name", name="pk_task_effects"),
    )


def downgrade() -> None:
    op.drop_table("task_effects")
    op.drop_table("workers")
    op.drop_table("tasks")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("channel")
