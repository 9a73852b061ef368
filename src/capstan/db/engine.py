"""Engine construction: the one place that knows PostgreSQL and SQLite connect differently."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from capstan.settings import to_async_url


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine for a `postgresql://` or `sqlite://` URL."""
    async_url = to_async_url(url)
    if async_url.startswith("sqlite"):
        engine = create_async_engine(async_url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    engine = create_async_engine(
        async_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs a round trip per checkout on every hot path. A connection
        # found dead fails its statement instead (503 to API clients, retried by workers and
        # subscribers) and SQLAlchemy then drops every pooled connection of that generation.
        pool_recycle=1800,
        # Parameters are user data and secrets (webhook signing secrets, key hashes): never
        # in an exception's text, so never in a logged traceback (docs/security.md).
        hide_parameters=True,
    )
    event.listen(engine.sync_engine, "handle_error", _broken_protocol_is_a_disconnect)
    return engine


def _broken_protocol_is_a_disconnect(context: Any) -> None:
    # After a server restart asyncpg can leave a connection mid-operation ("cannot switch to
    # state ...; another operation is in progress"). SQLAlchemy does not count that as a
    # disconnect, so the broken connection went back to the pool and failed every later
    # checkout; marked as one, it is discarded with its generation.
    if "another operation is in progress" in str(context.original_exception):
        context.is_disconnect = True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
    # Let SQLAlchemy's "begin" event decide how transactions start (see below).
    dbapi_connection.isolation_level = None


WRITE_OPTION = "capstan_write"


def _sqlite_begin(conn: Any) -> None:
    # A deferred transaction that reads and then writes fails with SQLITE_BUSY when another
    # writer got in between; writers take the lock up front (and queue on busy_timeout),
    # readers stay deferred so WAL lets them run beside the writer.
    if conn.get_execution_options().get(WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


class _SqliteSessions(async_sessionmaker[Any]):
    """`db()` for reads, `db.begin()` for writes: the one place SQLite needs to know which."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine, expire_on_commit=False)
        self._writers = async_sessionmaker(
            engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )

    def begin(self) -> Any:
        return self._writers.begin()


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    """Sessions that keep loaded attributes after commit (responses are built after it).
    Write with `async with db.begin()`, read with `async with db()`."""
    if engine.dialect.name == "sqlite":
        return _SqliteSessions(engine)
    return async_sessionmaker(engine, expire_on_commit=False)
