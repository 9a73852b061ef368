"""Every API instance applies every revocation: it polls `auth_revocations` in the background.

A revoked key (or one whose tenant was disabled or deleted, or whose rotation overlap ended)
is dropped from this process's verified-key cache and its sessions are deleted, within
CAPSTAN_AUTH_REVOCATION_POLL_SECONDS of the change. The poll is one indexed query per
interval per process, never on a request's path. In embedded mode it is also how a
`capstan keys revoke` run in another process reaches the in-memory sessions of `capstan dev`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from capstan.auth.service import Authenticator
from capstan.cache.port import CacheUnavailable
from capstan.db.schema import AuthRevocation

log = logging.getLogger(__name__)

# Rows are read again this far back: commits land after their effective_at, clocks differ.
MARGIN = timedelta(seconds=30)


class RevocationWatcher:
    def __init__(
        self, db: async_sessionmaker[Any], auth: Authenticator, *, poll_seconds: float
    ) -> None:
        self._db = db
        self._auth = auth
        self._poll_seconds = poll_seconds
        self._since = datetime.now(UTC) - MARGIN
        self._applied: set[int] = set()  # rows already applied within the margin window

    async def poll_once(self) -> list[str]:
        """Apply the revocations that took effect since the last poll; their key ids."""
        now = datetime.now(UTC)
        async with self._db() as session:
            rows = list(
                await session.execute(
                    select(AuthRevocation.id, AuthRevocation.key_id).where(
                        AuthRevocation.effective_at >= self._since - MARGIN,
                        AuthRevocation.effective_at <= now,
                    )
                )
            )
        fresh = [(row_id, key_id) for row_id, key_id in rows if row_id not in self._applied]
        keys = list(dict.fromkeys(key_id for _, key_id in fresh))
        if keys:
            self._auth.forget(keys)
        pending = False
        for row_id, key_id in fresh:
            try:
                await self._auth.close_key_sessions(key_id)
            except CacheUnavailable:
                pending = True  # not marked applied: retried at the next poll
                continue
            self._applied.add(row_id)
        self._applied.intersection_update(row_id for row_id, _ in rows)
        if not pending:  # else the window stays open until the sessions are deleted
            self._since = now
        return keys

    async def run(self, stopping: asyncio.Event) -> None:
        """Poll until `stopping` is set; a failed poll is logged and retried."""
        while not stopping.is_set():
            try:
                await self.poll_once()
            except Exception as exc:  # the database may be down: keep watching
                log.warning("revocation poll failed", extra={"error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self._poll_seconds)
