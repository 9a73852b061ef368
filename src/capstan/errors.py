"""Domain errors. The API renders each as RFC 9457 problem+json with its status."""

from __future__ import annotations

from typing import Any


class CapstanError(Exception):
    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions


class BadRequest(CapstanError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(CapstanError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class NotFound(CapstanError):
    status, title, slug = 404, "Not Found", "not-found"


class PreconditionFailed(CapstanError):
    status, title, slug = 412, "Precondition Failed", "precondition-failed"


class Conflict(CapstanError):
    status, title, slug = 409, "Conflict", "conflict"


class InvalidInput(CapstanError):
    status, title, slug = 422, "Unprocessable Content", "invalid-input"


class RateLimited(CapstanError):
    status, title, slug = 429, "Too Many Requests", "rate-limited"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after


class Unavailable(CapstanError):
    status, title, slug = 503, "Service Unavailable", "unavailable"


class Forbidden(CapstanError):
    status, title, slug = 403, "Forbidden", "forbidden"
