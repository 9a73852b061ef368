"""The webhook dispatcher: sends due deliveries, records every attempt, retries with backoff,
and disables webhooks that keep failing.

One pass (`dispatch_due`):
1. claim: in a short transaction, pick due pending deliveries of active webhooks
   (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several dispatchers share the work; SQLite
   serializes writers) and push their `next_attempt_at` forward by a lease, then commit;
2. send each claimed delivery concurrently (bounded), no transaction open meanwhile;
3. record: one transaction per delivery adds the attempt and moves the delivery on.
A dispatcher that dies between 1 and 3 leaves the delivery pending; it is sent again when the
lease ends (at least once; receivers dedupe by `Capstan-Event-Id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from capstan.db.schema import Webhook, WebhookAttempt, WebhookDelivery
from capstan.events.envelope import encode
from capstan.observability.metrics import Metrics
from capstan.retry import Backoff
from capstan.settings import Settings
from capstan.webhooks.address_guard import (
    AddressRefused,
    ResolutionFailed,
    Resolver,
    pick_address,
    resolve,
)
from capstan.webhooks.signing import delivery_headers

log = logging.getLogger(__name__)

MAX_DELAY_SECONDS = 3600.0
LEASE_MARGIN_SECONDS = 30.0
MAX_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: int
    webhook_id: str
    url: str
    secret: str
    event_id: str
    event_type: str
    envelope: dict[str, Any]
    attempt: int  # the number this attempt will have (1-based)


@dataclass(frozen=True, slots=True)
class Result:
    outcome: str  # succeeded | failed | refused
    at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None


def backoff_seconds(base: float, attempts: int, jitter: float) -> float:
    """Delay before the next try after `attempts` failures (capstan.retry), capped at an hour,
    over its upper half (`jitter` in [0, 1]): retries of many deliveries do not move in
    lockstep, and each delay stays at least half its nominal value."""
    return Backoff(base, MAX_DELAY_SECONDS).delay(attempts, jitter)


def pinned_request(
    client: httpx.AsyncClient, url: str, address: str, body: bytes, headers: dict[str, str]
) -> httpx.Request:
    """A POST to `url` connected to `address`: `Host` and TLS SNI/verification keep the name."""
    original = httpx.URL(url)
    request = client.build_request(
        "POST",
        original.copy_with(host=address),
        content=body,
        headers={**headers, "Host": original.netloc.decode("ascii")},
        extensions={"sni_hostname": original.host},
    )
    return request


class WebhookDispatcher:
    def __init__(
        self,
        db: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        settings: Settings,
        *,
        concurrency: int = 16,
        batch_size: int = 100,
        poll_seconds: float = 1.0,
        resolver: Resolver = resolve,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._settings = settings
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._resolver = resolver
        self._jitter = jitter
        self._wakeup = asyncio.Event()
        self._client: httpx.AsyncClient | None = None

    def wake(self) -> None:
        """Ask for a pass now (the notifier calls this after committing new deliveries)."""
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Dispatch until `stopping` is set; woken by `wake()` or every poll interval."""
        async with self._new_client() as client:
            self._client = client
            try:
                while not stopping.is_set():
                    self._wakeup.clear()
                    try:
                        sent = await self.dispatch_due()
                    except Exception as exc:
                        log.warning("webhook dispatch pass failed", extra={"error": repr(exc)})
                        sent = 0
                    if sent >= self._batch_size:
                        continue  # more may be due right away
                    await _first_of(self._wakeup, stopping, seconds=self._poll_seconds)
            finally:
                self._client = None

    async def dispatch_due(self) -> int:
        """One pass: claim due deliveries, send them, record the outcomes. Returns how many."""
        claimed = await self._claim()
        if not claimed:
            return 0
        if self._client is not None:
            await self._send_all(self._client, claimed)
        else:
            async with self._new_client() as client:
                await self._send_all(client, claimed)
        return len(claimed)

    def _new_client(self) -> httpx.AsyncClient:
        timeout = self._settings.webhook_timeout_seconds
        return httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            # Each request is pinned to the address the guard checked; a pooled connection
            # could carry one host's TLS session over to another name on the same address.
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,  # no proxy from the environment may bypass the address guard
        )

    async def _claim(self) -> list[Claimed]:
        now = datetime.now(UTC)
        lease = timedelta(seconds=self._settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)
        async with self._db.begin() as session:
            rows = (
                await session.execute(
                    select(WebhookDelivery, Webhook.url, Webhook.secret)
                    .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                    .where(
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at <= now,
                        Webhook.status == "active",
                    )
                    .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True, of=WebhookDelivery)
                )
            ).all()
            claimed: list[Claimed] = []
            for delivery, url, secret in rows:
                delivery.next_attempt_at = now + lease
                claimed.append(
                    Claimed(
                        delivery_id=delivery.id,
                        webhook_id=delivery.webhook_id,
                        url=url,
                        secret=secret,
                        event_id=delivery.event_id,
                        event_type=delivery.event_type,
                        envelope=delivery.envelope,
                        attempt=delivery.attempts + 1,
                    )
                )
        return claimed

    async def _send_all(self, client: httpx.AsyncClient, claimed: list[Claimed]) -> None:
        gate = asyncio.Semaphore(self._concurrency)

        async def one(item: Claimed) -> None:
            async with gate:
                result = await self._send(client, item)
            try:
                await self._record(item, result)
            except Exception as exc:
                # The lease runs out and the delivery is sent again: at least once.
                log.warning(
                    "webhook attempt not recorded",
                    extra={"delivery_id": item.delivery_id, "error": repr(exc)},
                )

        await asyncio.gather(*(one(item) for item in claimed))

    async def _send(self, client: httpx.AsyncClient, item: Claimed) -> Result:
        at = datetime.now(UTC)
        started = time.perf_counter()

        def result(outcome: str, status_code: int | None, error: str | None) -> Result:
            duration = (time.perf_counter() - started) * 1000
            if error is not None:
                error = error[:MAX_ERROR_CHARS]
            return Result(outcome, at, round(duration, 3), status_code, error)

        body = encode(item.envelope)
        headers = delivery_headers(
            secret=item.secret,
            body=body,
            event_id=item.event_id,
            event_type=item.event_type,
            attempt=item.attempt,
            webhook_id=item.webhook_id,
        )
        try:
            url = httpx.URL(item.url)
            async with asyncio.timeout(self._settings.webhook_timeout_seconds):
                address = await pick_address(
                    url.host,
                    url.port or (443 if url.scheme == "https" else 80),
                    allow_private=self._settings.webhook_allow_private,
                    resolver=self._resolver,
                )
                request = pinned_request(client, item.url, address, body, headers)
                response = await client.send(request, stream=True)
                await response.aclose()  # the body is never read
        except AddressRefused as exc:
            return result("refused", None, str(exc))
        except ResolutionFailed as exc:
            return result("failed", None, str(exc))
        except TimeoutError:
            return result(
                "failed", None, f"timed out after {self._settings.webhook_timeout_seconds:g}s"
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return result("failed", None, f"{type(exc).__name__}: {exc}".rstrip(": "))
        except Exception as exc:  # a receiver must not be able to break the pass
            log.warning(
                "unexpected webhook send error",
                extra={"delivery_id": item.delivery_id, "error": repr(exc)},
            )
            return result("failed", None, f"{type(exc).__name__}: {exc}".rstrip(": "))
        code = response.status_code
        if 200 <= code < 300:
            return result("succeeded", code, None)
        if 300 <= code < 400:
            return result("failed", code, f"unexpected status {code} (redirects are not followed)")
        return result("failed", code, f"unexpected status {code}")

    async def _record(self, item: Claimed, result: Result) -> None:
        s = self._settings
        now = datetime.now(UTC)
        self._metrics.webhook_attempts.labels(result.outcome).inc()
        async with self._db.begin() as session:
            # Webhook row first, then the delivery: the same lock order as enable and delete.
            hook = await session.scalar(
                select(Webhook).where(Webhook.id == item.webhook_id).with_for_update(key_share=True)
            )
            delivery = await session.get(WebhookDelivery, item.delivery_id)
            if hook is None or delivery is None:
                return  # deleted meanwhile
            session.add(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    attempt=item.attempt,
                    at=result.at,
                    status_code=result.status_code,
                    error=result.error,
                    duration_ms=result.duration_ms,
                )
            )
            delivery.attempts = item.attempt
            delivery.updated_at = now
            if result.outcome == "succeeded":
                delivery.status = "succeeded"
                delivery.next_attempt_at = None
                hook.consecutive_failures = 0
                return
            if item.attempt >= s.webhook_max_attempts:
                delivery.status = "failed"
                delivery.next_attempt_at = None
            else:
                delay = backoff_seconds(s.webhook_retry_base_seconds, item.attempt, self._jitter())
                delivery.next_attempt_at = now + timedelta(seconds=delay)
            hook.consecutive_failures += 1
            if hook.status == "active" and hook.consecutive_failures >= (
                s.webhook_disable_after_failures
            ):
                hook.status = "disabled"
                hook.disabled_reason = (
                    f"disabled after {hook.consecutive_failures} consecutive failed attempts; "
                    f"last: {result.error}"
                )
                log.warning(
                    "webhook disabled",
                    extra={"webhook_id": hook.id, "failures": hook.consecutive_failures},
                )
        log.info(
            "webhook attempt failed",
            extra={
                "webhook_id": item.webhook_id,
                "delivery_id": item.delivery_id,
                "event_id": item.event_id,
                "attempt": item.attempt,
                "outcome": result.outcome,
                "status_code": result.status_code,
                "error": result.error,
            },
        )


async def _first_of(a: asyncio.Event, b: asyncio.Event, *, seconds: float) -> None:
    """Wait until either event is set, or the timeout passes."""
    waiters = [asyncio.create_task(a.wait()), asyncio.create_task(b.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()
        for task in waiters:
            with contextlib.suppress(asyncio.CancelledError):
                await task
