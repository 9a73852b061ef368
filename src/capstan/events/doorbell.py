"""Waking the outbox relays of other processes once a commit has staged outbox rows.

A relay in another process learns of new rows from a PostgreSQL notification
(`LISTEN capstan_outbox`). The writing statements must not send it themselves: PostgreSQL
serializes the commits of every transaction that sent a NOTIFY, holding one database-wide
lock from before the commit record until its WAL flush is done, so a NOTIFY from each write
(the trigger of migrations 0002-0010) put every commit of the database in one line: 1,261 of
1,400 samples of the busy backends waited on that lock in the tasks benchmark (issue 11).

Instead each process rings after its commits, in a transaction of its own that does not wait
for the WAL flush (the lock is then held for microseconds): at most one ring in flight and one
per `spacing` seconds; the rings in between fold into the next. A relay drains the outbox
once woken, and under load gathers a batch for `CAPSTAN_OUTBOX_LINGER_MS` anyway, so rings
closer than that cannot publish anything sooner. A ring lost (the database down, the process
killed after its commit) costs latency, never an event: relays also poll
(`CAPSTAN_OUTBOX_POLL_SECONDS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

OUTBOX_CHANNEL = "capstan_outbox"
CLOSE_SECONDS = 2.0


class OutboxDoorbell:
    """`ring()` after a commit that staged outbox rows; relays elsewhere are notified soon."""

    def __init__(
        self,
        notify: Callable[[], Awaitable[object]],
        *,
        spacing: float,
        counted: Callable[[str], None] = lambda result: None,
    ) -> None:
        """`notify()` sends one notification (Dialect.notifier); `counted("sent" | "failed")`
        after each (capstan_outbox_rings_total)."""
        self._notify = notify
        self._counted = counted
        self._spacing = spacing
        self._rung = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending = False
        self._failing = False
        self._closed = False

    def ring(self) -> None:
        if self._closed:
            return
        self._rung.set()
        if self._task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): the relays' poll covers it
                return
            self._task = loop.create_task(self._run(), name="outbox-doorbell")

    async def _run(self) -> None:
        while True:
            await self._rung.wait()
            self._rung.clear()
            started = time.monotonic()
            self._sending = True
            try:
                await self._notify()
                self._counted("sent")
                if self._failing:
                    self._failing = False
                    log.info("outbox doorbell: notifying relays again")
            except Exception as exc:
                self._counted("failed")
                if not self._failing:  # once per outage, not once per commit
                    self._failing = True
                    log.warning(
                        "outbox doorbell: could not notify relays; they poll meanwhile",
                        extra={"error": repr(exc)},
                    )
                    # Tried again once: after a server restart the first ring fails on a
                    # pooled connection that is gone, and the pool hands the next a new one.
                    self._rung.set()
            finally:
                self._sending = False
            rest = self._spacing - (time.monotonic() - started)
            if rest > 0:
                await asyncio.sleep(rest)

    async def close(self) -> None:
        """Stop; a ring not sent yet is sent first (a CLI command closes right after its
        commit, and its relay should not wait for the poll)."""
        pending = self._rung.is_set() or self._sending
        self._rung.clear()
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if pending:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await self._notify()
                self._counted("sent")
