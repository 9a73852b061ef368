"""Run Alembic migrations programmatically against the configured database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from capstan.db.engine import create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def upgrade(url: str, revision: str = "heads") -> list[str]:
    """Bring the database at `url` up to `revision` (every head: features add migrations on
    branches from a common parent, so parallel work never renumbers another's revision).
    Returns the revisions it applied, oldest first (empty: it was up to date)."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(lambda sync_conn: _upgrade(sync_conn, revision))
    finally:
        await engine.dispose()


def _upgrade(connection: Connection, revision: str) -> list[str]:
    config = alembic_config(connection)
    before = _heads(connection)
    command.upgrade(config, revision)
    return _between(ScriptDirectory.from_config(config), before, _heads(connection))


async def pending(url: str) -> list[str]:
    """Revisions of this Capstan not yet applied to the database at `url`, oldest first."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: _between(
                    ScriptDirectory.from_config(alembic_config(c)), _heads(c), ("heads",)
                )
            )
    finally:
        await engine.dispose()


def _heads(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


def _between(script: ScriptDirectory, lower: tuple[str, ...], upper: tuple[str, ...]) -> list[str]:
    """Revisions in `upper`'s history and not in `lower`'s, oldest first."""

    def history(heads: tuple[str, ...]) -> set[str]:
        if not heads:
            return set()
        return {r.revision for r in script.iterate_revisions(heads, "base") if r is not None}

    new = history(upper) - history(lower)
    return [r.revision for r in reversed(list(script.walk_revisions())) if r.revision in new]


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
