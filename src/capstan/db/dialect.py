"""The one place that knows how SQLite and PostgreSQL differ.

A `Dialect` is chosen once, from the database URL (`dialect_for`), and handed to the code that
needs one of the operations that differ: how to connect and start a write transaction, an
insert that ignores a duplicate key, a transaction-scoped and a session-scoped try-lock
(advisory locks on PostgreSQL; SQLite's single writer makes them trivial in one process),
LISTEN/NOTIFY wake-ups, JSON tag containment, and PostgreSQL's single-statement fast path.
No other module (migrations aside) branches on the dialect's name: a test (tests/unit/
test_dialect_seam.py) keeps it so. Statements that do not depend on the call are built once,
at import time, and handed out as they are.

Where a subsystem has an adapter per dialect (database search, backups), the dialect picks it
with `choose(sqlite=..., postgresql=...)`: the subsystem keeps its code, not the decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    bindparam,
    event,
    exists,
    func,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite as lite
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from capstan.settings import to_async_url

if TYPE_CHECKING:
    from capstan.db.fastpath import FastPath

log = logging.getLogger(__name__)

T = TypeVar("T")

# The execution option that makes a SQLite transaction take the write lock when it begins.
WRITE_OPTION = "capstan_write"


class Dialect(ABC):
    """The operations in which SQLite and PostgreSQL differ; one instance per dialect."""

    name: ClassVar[str]
    # The database is one file on this machine (SQLite): created on first use, backed up by
    # copying it, kept under the data directory.
    is_file: ClassVar[bool]
    # A read replica (CAPSTAN_DATABASE_READ_URL) can serve list and search reads.
    read_replicas: ClassVar[bool]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def choose(self, *, sqlite: T, postgresql: T) -> T:
        """This dialect's one of two per-dialect alternatives (adapters, labels)."""
        return sqlite if self.name == SqliteDialect.name else postgresql

    # --- connecting -----------------------------------------------------------------------

    @abstractmethod
    def create_engine(self, url: str, *, pool_size: int = 10) -> AsyncEngine:
        """An async engine for a URL of this dialect (plain or async driver)."""

    def sessionmaker(self, engine: AsyncEngine) -> async_sessionmaker[Any]:
        """Sessions that keep loaded attributes after commit (responses are built after it).
        Write with `async with db.begin()`, read with `async with db()`."""
        return async_sessionmaker(engine, expire_on_commit=False)

    def fast_path(self, url: str, *, max_size: int) -> FastPath | None:
        """The pool for single-statement hot paths, or None where the ORM path is used."""
        return None

    # --- statements -----------------------------------------------------------------------

    @abstractmethod
    def insert_ignoring_conflicts(self, table: Table) -> Any:
        """`INSERT INTO table ... ON CONFLICT DO NOTHING`, values to be bound by the caller;
        built once per table and reused."""

    async def insert_ignore(
        self, session: AsyncSession, table: Table, values: dict[str, Any]
    ) -> bool:
        """Insert unless a unique key already holds the row; True when this call inserted it."""
        result = await session.execute(self.insert_ignoring_conflicts(table).values(**values))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def insert_ignore_returning(
        self,
        session: AsyncSession,
        table: Table,
        values: dict[str, Any],
        column: ColumnElement[Any],
    ) -> Any | None:
        """`insert_ignore` that also returns `column` of the new row (None when it existed),
        in the same round trip (RETURNING: PostgreSQL, and SQLite >= 3.35)."""
        stmt = self.insert_ignoring_conflicts(table).values(**values).returning(column)
        return (await session.execute(stmt)).scalar_one_or_none()

    @abstractmethod
    def has_tag(self, tags: Any, tag: str) -> ColumnElement[bool]:
        """`tag` is an element of the JSON array column `tags`."""

    # --- locks and wake-ups ---------------------------------------------------------------

    @abstractmethod
    async def try_transaction_lock(self, session: AsyncSession, key: int) -> bool:
        """Take `key` for the rest of the session's write transaction if no other transaction
        holds it; False (without waiting) when one does."""

    @abstractmethod
    def hold_lock(
        self, engine: AsyncEngine, key: int
    ) -> contextlib.AbstractAsyncContextManager[bool]:
        """Try to take `key` for the duration of the block without waiting; yields whether it
        was taken (one holder among every process on the database)."""

    async def listen(
        self, engine: AsyncEngine, channel: str, wake: Callable[[], None], stopping: asyncio.Event
    ) -> None:
        """Call `wake` on every notification on `channel` until `stopping` is set. Without
        server notifications this returns at once: writers in the process wake readers
        directly (Container.outbox_wakeup)."""
        return None

    def notifier(
        self, engine: AsyncEngine, channel: str, fast: FastPath | None
    ) -> Callable[[], Awaitable[object]] | None:
        """A coroutine function that notifies `channel`'s listeners in other processes
        (capstan.events.doorbell); None without server notifications."""
        return None


class SqliteDialect(Dialect):
    name = "sqlite"
    is_file = True
    read_replicas = False

    # Process-wide: SQLite is embedded mode, one process shares these among its instances.
    _locks: ClassVar[dict[int, asyncio.Lock]] = {}
    _inserts: ClassVar[dict[str, Any]] = {}

    def create_engine(self, url: str, *, pool_size: int = 10) -> AsyncEngine:
        engine = create_async_engine(
            to_async_url(url), connect_args={"timeout": 30}, hide_parameters=True
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine

    def sessionmaker(self, engine: AsyncEngine) -> async_sessionmaker[Any]:
        return _SqliteSessions(engine)

    def insert_ignoring_conflicts(self, table: Table) -> Any:
        stmt = self._inserts.get(table.name)
        if stmt is None:
            stmt = self._inserts[table.name] = lite.insert(table).on_conflict_do_nothing()
        return stmt

    def has_tag(self, tags: Any, tag: str) -> ColumnElement[bool]:
        each = func.json_each(tags).table_valued("value")
        return exists(select(1).select_from(each).where(each.c.value == tag))

    async def try_transaction_lock(self, session: AsyncSession, key: int) -> bool:
        # A write transaction holds SQLite's one write lock (BEGIN IMMEDIATE): no other
        # transaction can be inside the same critical section.
        return True

    @contextlib.asynccontextmanager
    async def hold_lock(self, engine: AsyncEngine, key: int) -> AsyncIterator[bool]:
        # Embedded mode is one process: an asyncio lock per key stands for the advisory lock.
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            yield False
            return
        async with lock:
            yield True


class PostgresDialect(Dialect):
    name = "postgresql"
    is_file = False
    read_replicas = True

    _inserts: ClassVar[dict[str, Any]] = {}

    def create_engine(self, url: str, *, pool_size: int = 10) -> AsyncEngine:
        engine = create_async_engine(
            to_async_url(url),
            pool_size=pool_size,
            max_overflow=pool_size,
            # No pre-ping: it costs a round trip per checkout on every hot path. A connection
            # found dead fails its statement instead (503 to API clients, retried by workers
            # and subscribers) and SQLAlchemy then drops every pooled connection of that
            # generation.
            pool_recycle=1800,
            # Parameters are user data and secrets (webhook signing secrets, key hashes):
            # never in an exception's text, so never in a logged traceback (docs/security.md).
            hide_parameters=True,
        )
        event.listen(engine.sync_engine, "handle_error", _broken_protocol_is_a_disconnect)
        return engine

    def fast_path(self, url: str, *, max_size: int) -> FastPath | None:
        from capstan.db.fastpath import FastPath

        return FastPath(url, max_size=max_size)

    def insert_ignoring_conflicts(self, table: Table) -> Any:
        stmt = self._inserts.get(table.name)
        if stmt is None:
            stmt = self._inserts[table.name] = pg.insert(table).on_conflict_do_nothing()
        return stmt

    def has_tag(self, tags: Any, tag: str) -> ColumnElement[bool]:
        # JSONB containment: what the GIN index on documents.tags answers.
        return type_coerce(tags, pg.JSONB).contains([tag])

    async def try_transaction_lock(self, session: AsyncSession, key: int) -> bool:
        return bool(await session.scalar(_TRY_XACT_LOCK, {"k": key}))

    @contextlib.asynccontextmanager
    async def hold_lock(self, engine: AsyncEngine, key: int) -> AsyncIterator[bool]:
        # A session advisory lock on a dedicated connection, released before it goes back.
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            taken = bool(await conn.scalar(_TRY_LOCK, {"k": key}))
            try:
                yield taken
            finally:
                if taken:
                    await conn.execute(_UNLOCK, {"k": key})

    async def listen(
        self, engine: AsyncEngine, channel: str, wake: Callable[[], None], stopping: asyncio.Event
    ) -> None:
        import asyncpg

        # A connection of its own: a pooled one would go back to the pool still listening.
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stopping.is_set():
            conn: Any = None
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
                await conn.add_listener(channel, lambda *_: wake())
                wake()  # catch up on whatever was committed while deaf
                while not stopping.is_set() and not conn.is_closed():
                    await _wait(stopping, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost", extra={"error": str(exc), "channel": channel})
                await _wait(stopping, 1.0)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)

    def notifier(
        self, engine: AsyncEngine, channel: str, fast: FastPath | None
    ) -> Callable[[], Awaitable[object]] | None:
        # One simple query is one implicit transaction: SET LOCAL applies to this NOTIFY only,
        # whose commit then does not wait for the WAL flush (see capstan.events.doorbell).
        sql = f"SET LOCAL synchronous_commit = off; NOTIFY {channel}"
        if fast is not None:
            return functools.partial(fast.execute, sql)

        async def notify() -> None:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver: Any = raw.driver_connection  # asyncpg's, outside SQLAlchemy's
                await driver.execute(sql)

        return notify


_TRY_XACT_LOCK = select(func.pg_try_advisory_xact_lock(bindparam("k", type_=BigInteger)))
_TRY_LOCK = text("SELECT pg_try_advisory_lock(:k)")
_UNLOCK = text("SELECT pg_advisory_unlock(:k)")

SQLITE = SqliteDialect()
POSTGRESQL = PostgresDialect()
_BY_NAME: dict[str, Dialect] = {SQLITE.name: SQLITE, POSTGRESQL.name: POSTGRESQL}


def dialect_for(url: str) -> Dialect:
    """The dialect of a database URL (`postgresql://`, `postgres://`, `sqlite://`, with or
    without a driver)."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    dialect = _BY_NAME.get("postgresql" if scheme == "postgres" else scheme)
    if dialect is None:
        raise ValueError(f"unsupported database URL scheme {scheme!r}: use postgresql or sqlite")
    return dialect


def dialect_of(bind: AsyncEngine | AsyncConnection | AsyncSession | Any) -> Dialect:
    """The dialect of an engine, connection or session (for the few helpers handed only a
    session: one dictionary look-up)."""
    if isinstance(bind, AsyncSession):
        bind = bind.get_bind()
    return _BY_NAME[bind.dialect.name]


# --- SQLite connection set-up --------------------------------------------------------------


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


# --- PostgreSQL connection set-up ----------------------------------------------------------


def _broken_protocol_is_a_disconnect(context: Any) -> None:
    # After a server restart asyncpg can leave a connection mid-operation ("cannot switch to
    # state ...; another operation is in progress"). SQLAlchemy does not count that as a
    # disconnect, so the broken connection went back to the pool and failed every later
    # checkout; marked as one, it is discarded with its generation.
    if "another operation is in progress" in str(context.original_exception):
        context.is_disconnect = True


async def _wait(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
