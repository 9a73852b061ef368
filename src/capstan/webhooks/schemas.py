"""Request and response bodies for /v1/webhooks."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from capstan.storable import StorableInput

MAX_URL_CHARS = 2000
MAX_PATTERNS = 20
WORD = r"(?:[a-z0-9_-]+|\*|#)"
PATTERN_RE = re.compile(rf"^{WORD}(?:\.{WORD})*$")


def check_url(value: str) -> str:
    value = value.strip()
    # C0 and C1 controls and DEL: header injection and parser confusion, never a real URL.
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise ValueError("must not contain control characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if port == 0:
        raise ValueError("port 0 is not valid")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    return value


def check_pattern(value: str) -> str:
    if len(value) > 200 or not PATTERN_RE.match(value):
        raise ValueError(
            "a pattern is routing-key words ([a-z0-9_-]+, `*` for one word, `#` for any "
            "number) joined by dots, like `document.*` or `#`"
        )
    return value


Url = Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS), AfterValidator(check_url)]
Pattern = Annotated[str, AfterValidator(check_pattern)]


class WebhookCreate(StorableInput):
    model_config = ConfigDict(extra="forbid")

    url: Url = Field(description="http(s) URL that receives POSTed CloudEvents")
    patterns: list[Pattern] = Field(
        default_factory=lambda: ["#"],
        min_length=1,
        max_length=MAX_PATTERNS,
        description="routing-key patterns (`<entity>.<action>`, AMQP topic syntax)",
    )


class WebhookRead(BaseModel):
    id: str
    url: str
    patterns: list[str]
    status: str = Field(description="active | disabled")
    disabled_reason: str | None
    consecutive_failures: int
    created_at: datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(description="signing secret; shown only in this response")


class WebhookList(BaseModel):
    items: list[WebhookRead]


class AttemptRead(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryRead(BaseModel):
    id: int
    event_id: str
    event_type: str
    status: str = Field(description="pending | succeeded | failed")
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    history: list[AttemptRead] = Field(description="every attempt, oldest first")


class DeliveryPage(BaseModel):
    items: list[DeliveryRead] = Field(description="newest first")
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page")
