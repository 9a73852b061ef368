"""Run Alembic migrations programmatically against the configured database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from capstan.db.engine import create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def upgrade(url: str, revision: str = "heads") -> None:
    """Bring the database at `url` up to `revision` (every head: features add migrations on
    branches from a common parent, so parallel work never renumbers another's revision)."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(
                lambda sync_conn: command.upgrade(alembic_config(sync_conn), revision)
            )
    finally:
        await engine.dispose()


async def downgrade(url: str, revision: str) -> None:
    """Take the database at `url` down to `revision`."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(
                lambda sync_conn: command.downgrade(alembic_config(sync_conn), revision)
            )
    finally:
        await engine.dispose()
