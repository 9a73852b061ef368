"""The outbox relay loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from capstan.broker.port import Broker, BrokerUnavailable, Message, QueueSpec
from capstan.db.dialect import Dialect
from capstan.db.fastpath import FastPath
from capstan.db.schema import OutboxEvent
from capstan.events.batch import batch_message
from capstan.events.doorbell import OUTBOX_CHANNEL
from capstan.events.envelope import encode
from capstan.events.topology import Topology
from capstan.observability.metrics import Metrics
from capstan.retry import Backoff

log = logging.getLogger(__name__)

# Transaction lock key (an advisory lock on PostgreSQL): one relay publishes at a time, in
# commit order.
RELAY_LOCK_KEY = 0x0CA5_7A11
CLEANUP_EVERY_SECONDS = 60.0
GAUGES_EVERY_SECONDS = 2.0
# After a failed batch: 0.5, 1, 2, 4, then 5 s until one succeeds (one loop: no jitter).
RETRY = Backoff(0.5, 5.0, jitter="none")


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        db: async_sessionmaker[AsyncSession],
        broker: Broker,
        metrics: Metrics,
        *,
        dialect: Dialect,
        batch_size: int = 500,
        poll_seconds: float = 1.0,
        retention_hours: float = 24.0,
        wakeup: asyncio.Event | None = None,
        topology: Topology | None = None,
        declare: Sequence[QueueSpec] = (),
        task_queue: Callable[[str], QueueSpec] | None = None,
        fast: FastPath | None = None,
        linger_seconds: float = 0.0,
    ) -> None:
        self._topology = topology or Topology()
        # The subscribers' queues: each batch's events go to them (as one message per queue),
        # declared before anything is published, so that no event is lost even if a
        # subscriber starts after the relay; task queues are declared on first use.
        self._declare = list(declare)
        self._task_queue = task_queue
        self._declared: set[str] = set()
        self._routes: dict[tuple[str, str], bool] = {}  # (queue, routing key) -> routed there
        self._engine = engine
        self._db = db
        self._broker = broker
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._retention = timedelta(hours=retention_hours)
        self._wakeup = wakeup or asyncio.Event()
        self._dialect = dialect
        self.fail_after_publish: Callable[[], None] | None = None  # crash injection for tests
        self._fast = fast
        # Under load, the next batch waits until `linger_seconds` after the last one so that
        # it gathers the commits of that window: fewer, larger batches (one transaction, one
        # confirm per batch, and larger batches for every subscriber downstream). An idle relay
        # publishes at once. Tests replace `linger` to decide when the window closes.
        self._linger = linger_seconds
        self.linger: Callable[[asyncio.Event, float], Awaitable[None]] = _wait

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay until `stopping` is set."""
        # Commits on other processes wake us through the database's notifications, where it
        # has them (their processes NOTIFY capstan_outbox after committing: events/doorbell.py).
        listener = asyncio.create_task(
            self._dialect.listen(self._engine, OUTBOX_CHANNEL, self._wakeup.set, stopping)
        )
        failures = 0
        last_cleanup = last_gauges = 0.0
        last_sent = -float("inf")
        try:
            while not stopping.is_set():
                # Cleared before the batch, not after: a commit notified while we publish
                # must wake the next round instead of waiting for the poll.
                self._wakeup.clear()
                try:
                    sent = await self.relay_once()
                except BrokerUnavailable as exc:
                    self._metrics.relay_failures.inc()
                    # The error in the message too: a test's captured log prints messages only.
                    log.warning(
                        "relay: broker unavailable, retrying: %s", exc, extra={"error": str(exc)}
                    )
                    failures += 1
                    await _wait(stopping, RETRY.delay(failures))
                    continue
                except Exception:
                    log.exception("relay: batch failed, retrying")
                    failures += 1
                    await _wait(stopping, RETRY.delay(failures))
                    continue
                failures = 0
                now = time.monotonic()
                if now - last_gauges > GAUGES_EVERY_SECONDS:
                    last_gauges = now
                    await self._update_gauges()
                if now - last_cleanup > CLEANUP_EVERY_SECONDS:
                    last_cleanup = now
                    await self.cleanup()
                if sent:
                    last_sent = time.monotonic()
                if sent < self._batch_size:
                    await _wait_any(stopping, self._wakeup, self._poll_seconds)
                    window = last_sent + self._linger - time.monotonic()
                    if window > 0 and not stopping.is_set():
                        await self.linger(stopping, window)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def relay_once(self) -> int:
        """Publish one batch of unpublished events; returns how many were published."""
        if self._fast is not None:
            return await self._relay_once_fast(self._fast)
        async with self._db.begin() as session:
            if not await self._dialect.try_transaction_lock(session, RELAY_LOCK_KEY):
                return 0  # another relay is publishing; we are its standby
            await self._ensure_queues()
            rows = list(
                await session.scalars(
                    select(OutboxEvent)
                    .where(OutboxEvent.published_at.is_(None))
                    .order_by(OutboxEvent.id)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            )
            if not rows:
                return 0
            pending = [
                _Pending(
                    row.channel,
                    row.routing_key,
                    row.event_id,
                    row.tenant_id,
                    encode(row.envelope),
                    int(row.envelope.get("priority", 0)) if row.channel == "tasks" else 0,
                )
                for row in rows
            ]
            await self._publish(pending)
            await session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_([row.id for row in rows]))
                .values(published_at=datetime.now(UTC))
            )
        self._count(pending)
        return len(pending)

    async def _relay_once_fast(self, fast: FastPath) -> int:
        # The same steps as above without the ORM, in three round trips besides the publish:
        # BEGIN; the lock and the batch in one statement; the mark and COMMIT in one message.
        # The envelope travels as the text PostgreSQL stores (never decoded and encoded again).
        await self._ensure_queues()
        async with fast.connection() as conn:
            await conn.execute("BEGIN")
            try:
                rows = await conn.fetch(_SELECT_BATCH, RELAY_LOCK_KEY, self._batch_size)
                if not rows:  # nothing to send, or another relay holds the lock (standby)
                    await conn.execute("ROLLBACK")
                    return 0
                pending = [
                    _Pending(
                        row["channel"],
                        row["routing_key"],
                        row["event_id"],
                        row["tenant_id"],
                        row["body"].encode(),
                        int(row["priority"] or 0),
                    )
                    for row in rows
                ]
                await self._publish(pending)
                # Ids are bigints read from the table: inlining them is safe, and a simple
                # query carries the UPDATE and the COMMIT in one message.
                ids = ",".join(str(int(row["id"])) for row in rows)
                await conn.execute(_MARK_PUBLISHED_AND_COMMIT.format(ids=ids))
            except BaseException:
                if not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
        self._count(pending)
        return len(pending)

    async def _publish(self, pending: list[_Pending]) -> None:
        if self._task_queue is not None:
            for queue in {p.routing_key for p in pending if p.channel == "tasks"}:
                await self._declare_once(self._task_queue(queue))
        tasks = [_task_message(p) for p in pending if p.channel == "tasks"]
        try:
            if tasks:
                await self._broker.publish(tasks, self._topology.tasks_exchange)
            await self._fan_out([p for p in pending if p.channel == "events"])
        except BrokerUnavailable:
            # Maybe a queue deleted under us (an unroutable message is an error), or a broker
            # restarted without it: declare every queue again before the next try.
            self._declared.clear()
            raise
        if self.fail_after_publish is not None:
            self.fail_after_publish()

    async def _fan_out(self, events: list[_Pending]) -> None:
        """Each subscriber gets the batch's events it takes as one message, in commit order
        (capstan.events.batch), straight into its queue; confirmed together."""
        sends = []
        for spec in self._declare:
            mine = [(p.event_id, p.body) for p in events if self._takes(spec, p.routing_key)]
            if mine:
                sends.append(
                    self._broker.publish_to_queue(spec, [batch_message(mine)], declare=False)
                )
        await asyncio.gather(*sends)

    def _takes(self, spec: QueueSpec, routing_key: str) -> bool:
        key = (spec.name, routing_key)
        takes = self._routes.get(key)
        if takes is None:
            takes = self._routes[key] = spec.takes(routing_key)
        return takes

    def _count(self, pending: list[_Pending]) -> None:
        for p in pending:
            self._metrics.events_published.labels(
                p.routing_key if p.channel == "events" else "task.dispatch"
            ).inc()
        self._metrics.relay_batch_size.observe(len(pending))

    async def _ensure_queues(self) -> None:
        for spec in self._declare:
            await self._declare_once(spec)

    async def _declare_once(self, spec: QueueSpec) -> None:
        if spec.name not in self._declared:
            await self._broker.declare(spec)
            self._declared.add(spec.name)

    async def cleanup(self) -> int:
        """Delete published rows older than the retention; returns how many."""
        cutoff = datetime.now(UTC) - self._retention
        async with self._db.begin() as session:
            result = await session.execute(
                delete(OutboxEvent).where(
                    OutboxEvent.published_at.is_not(None), OutboxEvent.published_at < cutoff
                )
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def _update_gauges(self) -> None:
        async with self._db() as session:
            count, oldest = (
                await session.execute(
                    select(func.count(), func.min(OutboxEvent.created_at)).where(
                        OutboxEvent.published_at.is_(None)
                    )
                )
            ).one()
        self._metrics.outbox_backlog.set(count)
        age = 0.0
        if oldest is not None:
            if oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=UTC)
            age = max((datetime.now(UTC) - oldest).total_seconds(), 0.0)
        self._metrics.outbox_oldest_age.set(age)


# The lock is taken once, before the scan (an uncorrelated subquery); without it no row is
# returned, which the caller treats like an empty outbox.
_SELECT_BATCH = """
SELECT id, event_id, tenant_id, routing_key, channel, envelope::text AS body,
       CASE WHEN channel = 'tasks' THEN envelope->>'priority' END AS priority
  FROM outbox
 WHERE (SELECT pg_try_advisory_xact_lock($1)) AND published_at IS NULL
 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
"""
# clock_timestamp(): when the batch was confirmed, not when its transaction began.
_MARK_PUBLISHED_AND_COMMIT = (
    "UPDATE outbox SET published_at = clock_timestamp() WHERE id IN ({ids}); COMMIT"
)


@dataclass(frozen=True, slots=True)
class _Pending:
    """An outbox row on its way to the broker."""

    channel: str
    routing_key: str
    event_id: str
    tenant_id: str
    body: bytes
    priority: int


def _task_message(p: _Pending) -> Message:
    """A task's dispatch message (the outbox is the fallback of the publish after commit)."""
    return Message(
        routing_key=p.routing_key,
        body=p.body,
        message_id=p.event_id,
        headers={"tenantid": p.tenant_id},
        content_type="application/json",
        priority=p.priority,
    )


async def _wait(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


async def _wait_any(stopping: asyncio.Event, wakeup: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.create_task(stopping.wait()), asyncio.create_task(wakeup.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
