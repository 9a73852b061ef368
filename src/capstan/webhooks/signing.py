"""Signing webhook deliveries, and verifying them (the receiver's side, also used by tests).

Header: `Capstan-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
The timestamp is inside the MAC, so a captured request cannot be replayed with a fresh one;
receivers reject timestamps outside a tolerance window. Several `v1=` entries are accepted by
`verify` so a sender may sign with two secrets during a rotation.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import capstan

SIGNATURE_HEADER = "Capstan-Signature"
CONTENT_TYPE = "application/cloudevents+json"
USER_AGENT = f"Capstan-Webhooks/{capstan.__version__}"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Capstan-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    tolerance_seconds: float = 300,
    now: float | None = None,
) -> bool:
    """True when `header` is a valid signature of the raw `body` made within the tolerance."""
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    # Compare every candidate (no early exit) in constant time.
    matches = [hmac.compare_digest(expected, c) for c in candidates]
    return any(matches)


def delivery_headers(
    *,
    secret: str,
    body: bytes,
    event_id: str,
    event_type: str,
    attempt: int,
    webhook_id: str,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Every header of one delivery attempt (signed at send time, so retries are fresh)."""
    t = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": CONTENT_TYPE,
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secret, t, body),
        "Capstan-Event-Id": event_id,
        "Capstan-Event-Type": event_type,
        "Capstan-Delivery-Attempt": str(attempt),
        "Capstan-Webhook-Id": webhook_id,
    }
