"""The scheduler: cron arithmetic, due jobs on an injected clock, one runner per job, metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from capstan.backups import service
from capstan.backups.manifest import backup_root, list_backups
from capstan.composition import build_scheduler
from capstan.container import build_container
from capstan.db.dialect import POSTGRESQL
from capstan.db.engine import create_engine
from capstan.observability.metrics import Metrics
from capstan.scheduler.core import DatabaseLock, Job, LocalLock, Scheduler, next_run
from capstan.scheduler.jobs import BackupJob
from tests.backups.conftest import ScratchDb, embedded, start
from tests.backups.test_verify_prune import _fake_backup
from tests.conftest import free_port

T0 = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_next_run_follows_the_cron_expression() -> None:
    daily = "0 2 * * *"
    assert next_run(daily, T0) == datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    assert next_run(daily, datetime(2026, 3, 1, 2, 0, tzinfo=UTC)) == datetime(
        2026, 3, 2, 2, 0, tzinfo=UTC
    )
    assert next_run("*/15 * * * *", T0 + timedelta(minutes=7)) == T0 + timedelta(minutes=15)
    assert next_run("30 3 * * 1", T0) == datetime(2026, 3, 2, 3, 30, tzinfo=UTC)  # a Monday
    for bad in ("0 2 * *", "61 * * * *", "0 0 2 * * *", "daily"):
        with pytest.raises(ValueError):
            Job("x", bad, _noop)


async def _noop(_slot: datetime) -> None:
    return None


async def test_runs_a_job_when_due_on_an_injected_clock() -> None:
    clock = FakeClock(T0)
    slots: list[datetime] = []

    async def job(slot: datetime) -> None:
        slots.append(slot)

    stopping = asyncio.Event()
    sleeps: list[float] = []

    async def fake_sleep(seconds: float, stop: asyncio.Event) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        if len(slots) >= 2:
            stop.set()
        await asyncio.sleep(0)

    scheduler = Scheduler([Job("j", "0 2 * * *", job)], LocalLock(), clock=clock, sleep=fake_sleep)
    assert await scheduler.run_due(T0 + timedelta(minutes=59)) == []
    await asyncio.wait_for(scheduler.run(stopping), timeout=5)
    assert slots == [datetime(2026, 3, 1, 2, 0, tzinfo=UTC), datetime(2026, 3, 2, 2, 0, tzinfo=UTC)]
    assert max(sleeps) <= 60  # a clock jump is noticed within a minute
    assert scheduler.due["j"] == datetime(2026, 3, 3, 2, 0, tzinfo=UTC)


async def test_a_failing_job_does_not_stop_the_scheduler() -> None:
    calls = 0

    async def boom(_slot: datetime) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    scheduler = Scheduler([Job("b", "* * * * *", boom)], LocalLock(), clock=FakeClock(T0))
    scheduler.plan(T0)
    assert await scheduler.run_due(T0 + timedelta(minutes=1)) == ["b"]
    assert await scheduler.run_due(T0 + timedelta(minutes=2)) == ["b"]
    assert calls == 2


async def _two_schedulers_one_runs(
    a: Scheduler, b: Scheduler, started: asyncio.Event, release: asyncio.Event
) -> None:
    slot = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    for s in (a, b):
        s.plan(T0)
    first = asyncio.create_task(a.run_due(slot))
    await asyncio.wait_for(started.wait(), timeout=5)
    assert await b.run_due(slot) == []  # the lock is held: b skips this slot
    release.set()
    assert await first == ["job"]
    assert [name for name, _ in a.runs] == ["job"] and b.runs == []
    # Once released, the other scheduler takes the next slot.
    started.clear()
    assert await b.run_due(slot + timedelta(days=1)) == ["job"]


def _blocking_job(started: asyncio.Event, release: asyncio.Event) -> Job:
    async def fn(_slot: datetime) -> None:
        started.set()
        await release.wait()

    return Job("job", "0 2 * * *", fn)


async def test_local_lock_runs_a_job_once_at_a_time() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    a = Scheduler([_blocking_job(started, release)], LocalLock(), clock=FakeClock(T0))
    b = Scheduler([_blocking_job(started, release)], LocalLock(), clock=FakeClock(T0))
    await _two_schedulers_one_runs(a, b, started, release)


@pytest.mark.postgres
async def test_advisory_lock_keeps_two_schedulers_from_running_a_job_at_once(
    scratch_db: ScratchDb,
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    engine_a, engine_b = create_engine(scratch_db.url), create_engine(scratch_db.url)
    try:
        job_a, job_b = _blocking_job(started, release), _blocking_job(started, release)
        a = Scheduler([job_a], DatabaseLock(engine_a, POSTGRESQL), clock=FakeClock(T0))
        b = Scheduler([job_b], DatabaseLock(engine_b, POSTGRESQL), clock=FakeClock(T0))
        await _two_schedulers_one_runs(a, b, started, release)
    finally:
        await engine_a.dispose()
        await engine_b.dispose()


def _exported(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def _gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("capstan_backup_last_success_timestamp_seconds")


async def test_backup_job_backs_up_verifies_prunes_and_exports_metrics(tmp_path: Path) -> None:
    settings = embedded(tmp_path)
    api = await start(settings)
    await api.container.close()
    # Noon today: between the backup's slot (02:00) and the retention job's (03:30) the next
    # backup slot came after the retention's, and both were due (it failed in CI at 02:29).
    clock = FakeClock(datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0))
    root = backup_root(settings)
    _fake_backup(root, "ancient", clock.now - timedelta(days=30))

    container = build_container(settings)
    try:
        metrics = container.metrics
        assert "capstan_backup_last_success_timestamp_seconds " not in _exported(metrics)
        scheduler = build_scheduler(container, clock=clock)
        # Started from the newest backup on disk, so the alert does not fire after a restart.
        assert _gauge(metrics) == (clock.now - timedelta(days=30, seconds=-5)).timestamp()
        scheduler.plan()
        slot = scheduler.due["backup"]
        assert slot == next_run(settings.backup_schedule, clock.now)
        clock.now = slot + timedelta(seconds=1)
        assert await scheduler.run_due() == ["backup"]
        backups = list_backups(root)  # the ancient one was pruned
        assert [b.id for b in backups] == [clock.now.strftime("%Y%m%dT%H%M%SZ")]
        assert backups[0].verification()["ok"] is True  # type: ignore[index]
        assert _gauge(metrics) == clock.now.timestamp()
        duration = metrics.registry.get_sample_value("capstan_backup_duration_seconds")
        assert duration is not None and duration > 0
        assert metrics.registry.get_sample_value("capstan_backup_failures_total") == 0

        # Another scheduler arriving late for the same slot finds the backup and skips it.
        job = BackupJob(settings, metrics, clock=clock)
        await job(slot)
        assert len(list_backups(root)) == 1
    finally:
        await container.close()


async def test_backup_job_failure_counts_and_leaves_the_gauge_absent(tmp_path: Path) -> None:
    settings = embedded(tmp_path).model_copy(
        update={"cache_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    api = await start(settings.model_copy(update={"cache_url": "memory://"}))
    await api.container.close()
    metrics = Metrics()
    job = BackupJob(settings, metrics, clock=FakeClock(T0))
    with pytest.raises(service.BackupError):
        await job(T0)
    text = _exported(metrics)
    assert "capstan_backup_failures_total 1.0" in text
    assert "capstan_backup_last_success_timestamp_seconds" not in text
