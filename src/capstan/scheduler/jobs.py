"""The scheduler's jobs (the scheduler is built by capstan.composition.build_scheduler).

backup (CAPSTAN_BACKUP_SCHEDULE, default 02:00 UTC daily): create → verify → prune.
retention (CAPSTAN_RETENTION_SCHEDULE, default 03:30 UTC daily): scheduler/retention.py. The
last-success gauge moves only when verify passed; it starts from the newest good backup on
disk, so a restarted scheduler does not look as if it never backed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from capstan.backups import service
from capstan.backups.manifest import backup_root, list_backups
from capstan.backups.progress import BackupError
from capstan.db.dialect import Dialect
from capstan.observability.metrics import Metrics
from capstan.scheduler.core import Clock, DatabaseLock, JobLock, utc_now
from capstan.settings import Settings

log = logging.getLogger(__name__)


def set_last_success(metrics: Metrics, timestamp: float) -> None:
    """Set the gauge, registering it first: it is absent until there is a good backup."""
    with contextlib.suppress(ValueError):  # already registered
        metrics.registry.register(metrics.backup_last_success)
    metrics.backup_last_success.set(timestamp)


class BackupJob:
    def __init__(self, settings: Settings, metrics: Metrics, *, clock: Clock = utc_now) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock

    def init_gauge(self) -> None:
        last = service.last_success(self.settings)
        if last is not None:
            set_last_success(self.metrics, last)

    def done_for(self, slot: datetime) -> bool:
        """A complete backup from this slot or later exists (another scheduler made it)."""
        backups = list_backups(backup_root(self.settings))
        return bool(backups) and backups[-1].manifest.created >= slot

    async def __call__(self, slot: datetime) -> None:
        if self.done_for(slot):
            log.info("backup for this slot already exists", extra={"slot": slot.isoformat()})
            return
        started = time.monotonic()
        try:
            backup = await service.create(self.settings, now=self.clock())
            result = await service.verify(self.settings, backup.id)
            if not result.ok:
                raise BackupError(f"backup {backup.id} failed verify: {result.problems}")
            pruned = await asyncio.to_thread(service.prune, self.settings, now=self.clock())
        except Exception:
            self.metrics.backup_failures.inc()
            raise
        finally:
            self.metrics.backup_duration.set(time.monotonic() - started)
        set_last_success(self.metrics, self.clock().timestamp())
        log.info(
            "backup done",
            extra={"backup": backup.id, "size": backup.manifest.size, "pruned": pruned.removed},
        )


def job_lock(engine: AsyncEngine, dialect: Dialect) -> JobLock:
    """One scheduler acts per slot: the dialect's session lock (advisory on PostgreSQL)."""
    return DatabaseLock(engine, dialect)
