"""A write transaction owned by its caller: a route, a task handler, a CLI command.

Services add their changes to `uow.session` and only flush, so several of them (and the
outbox events announcing the changes) commit together or not at all. What must follow the
commit (waking the relay, invalidating the cache, forgetting revoked keys) is registered with
`after_commit` and runs, in order, once the caller's transaction has committed; never when it
rolled back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

AfterCommit = Callable[[], Awaitable[None] | None]


class UnitOfWork:
    """The caller's open write transaction and what to do once it commits."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._after: list[AfterCommit] = []

    def after_commit(self, hook: AfterCommit) -> None:
        """Run `hook` (a function or a coroutine function) after the commit."""
        self._after.append(hook)

    async def _committed(self) -> None:
        for hook in self._after:
            result = hook()
            if result is not None:
                await result


@contextlib.asynccontextmanager
async def unit_of_work(db: async_sessionmaker[Any]) -> AsyncIterator[UnitOfWork]:
    """`async with unit_of_work(c.db) as uow:` a write transaction (SQLite: taking the write
    lock up front), committed when the block ends and rolled back when it raises."""
    async with db.begin() as session:
        uow = UnitOfWork(session)
        yield uow
    await uow._committed()


def call_after_commit(session: AsyncSession, hook: Callable[[], None]) -> None:
    """Call `hook` once `session`'s transaction has committed (never if it rolls back): for
    code handed a session rather than a UnitOfWork (subscriber handlers)."""
    event.listen(session.sync_session, "after_commit", lambda _session: hook(), once=True)
