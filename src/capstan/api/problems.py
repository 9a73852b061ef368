"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from capstan.auth.failures import client_address
from capstan.db.errors import is_database_down
from capstan.errors import CapstanError, RateLimited
from capstan.observability.context import current_request_id

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://capstan.dev/problems/"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    # Extension members never override the standard ones (RFC 9457 section 3.2).
    body.update({k: v for k, v in extensions.items() if k not in body})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_HTTP_TITLES = {
    400: ("Bad Request", "bad-request"),
    401: ("Unauthorized", "unauthorized"),
    404: ("Not Found", "not-found"),
    405: ("Method Not Allowed", "method-not-allowed"),
    413: ("Content Too Large", "too-large"),
    415: ("Unsupported Media Type", "unsupported-media-type"),
}


def _is_data_exception(exc: Exception) -> bool:
    """SQLSTATE class 22 ("data exception", PostgreSQL appendix A)."""
    # SQLAlchemy's wrapper keeps the driver's error in `orig`; the fast path's is unwrapped.
    sqlstate = getattr(getattr(exc, "orig", exc), "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("22")


def _printable(text: str) -> str:
    # Echoed input may hold lone surrogates, which no UTF-8 response body can carry.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    @app.exception_handler(CapstanError)
    async def _domain(request: Request, exc: CapstanError) -> JSONResponse:
        headers = None
        if exc.status == 401:
            # Counted only here, on failure: the successful path never touches the limiter.
            failures = request.app.state.container.auth_failures
            retry_after = await failures.record(client_address(request))
            if retry_after:
                exc = RateLimited(
                    "too many failed authentications from this address",
                    retry_after=retry_after,
                )
            else:
                headers = {"WWW-Authenticate": 'Bearer realm="capstan"'}
        retry_after = exc.extensions.get("retry_after")
        if retry_after is not None:
            headers = {"Retry-After": str(max(1, round(retry_after + 0.5)))}
        return problem(
            exc.status, exc.title, exc.detail, slug=exc.slug, headers=headers, **exc.extensions
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [_printable(p) if isinstance(p, str) else p for p in e.get("loc", ())],
                "msg": _printable(str(e.get("msg", ""))),
                "type": e.get("type", ""),
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return problem(
            422,
            "Unprocessable Content",
            f"{where}: {first['msg']}" if where else str(first["msg"]),
            slug="invalid-input",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title, slug = _HTTP_TITLES.get(exc.status_code, ("Error", "http-error"))
        return problem(
            exc.status_code, title, str(exc.detail), slug=slug, headers=dict(exc.headers or {})
        )

    @app.exception_handler(DBAPIError)
    @app.exception_handler(OSError)
    # The hot paths (capstan.db.fastpath) raise asyncpg's own errors, unwrapped.
    @app.exception_handler(asyncpg.PostgresError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.InternalClientError)
    async def _db_down(request: Request, exc: Exception) -> JSONResponse:
        if _is_data_exception(exc):
            # The backstop behind validation at the door: a value the database cannot take
            # (NUL in a path parameter, a number out of a column's range) is the caller's
            # error. Nothing was written: the statement failed.
            return problem(
                422,
                "Unprocessable Content",
                "a value in this request cannot be stored or compared by the database "
                "(NUL characters, lone surrogates and out-of-range numbers are refused)",
                slug="invalid-input",
            )
        if not is_database_down(exc):
            return await _unexpected(request, exc)
        log.warning("database unavailable", extra={"error": str(exc)})
        return problem(
            503,
            "Service Unavailable",
            "the database is unavailable; retry shortly",
            slug="unavailable",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem(
            500, "Internal Server Error", "an unexpected error occurred", slug="internal"
        )
