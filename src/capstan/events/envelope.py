"""Parsing CloudEvents 1.0 envelopes received from the broker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

TYPE_PREFIX = "capstan."
# One event per message, and several (one envelope per line) per message.
CONTENT_TYPE = "application/cloudevents+json"
NDJSON = "application/x-ndjson"


class MalformedEvent(ValueError):
    """The message is not a Capstan CloudEvent; retrying cannot help."""


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    source: str
    subject: str
    time: datetime
    tenant_id: str
    data: dict[str, Any]
    envelope: dict[str, Any]
    # The bytes received: stores that keep the envelope as JSON take them as they are instead
    # of encoding `envelope` again (the audit batch).
    body: bytes = b""

    @property
    def routing_key(self) -> str:
        """`<entity>.<action>`: the type without the `capstan.` prefix."""
        return self.type.removeprefix(TYPE_PREFIX)


def parse_event(body: bytes) -> Event:
    try:
        env = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from exc
    if not isinstance(env, dict):
        raise MalformedEvent("not a JSON object")
    if env.get("specversion") != "1.0":
        raise MalformedEvent(f"specversion {env.get('specversion')!r} is not 1.0")
    missing = [k for k in ("id", "type", "source", "time", "tenantid") if not env.get(k)]
    if missing:
        raise MalformedEvent(f"missing attributes: {', '.join(missing)}")
    try:
        time = datetime.fromisoformat(str(env["time"]).replace("Z", "+00:00"))
    except ValueError as exc:
        raise MalformedEvent(f"bad time {env['time']!r}") from exc
    data = env.get("data") or {}
    if not isinstance(data, dict):
        raise MalformedEvent("data is not an object")
    return Event(
        id=str(env["id"]),
        type=str(env["type"]),
        source=str(env["source"]),
        subject=str(env.get("subject") or ""),
        time=time,
        tenant_id=str(env["tenantid"]),
        data=data,
        envelope=env,
        body=body,
    )


def encode(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode()
