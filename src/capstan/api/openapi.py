"""The OpenAPI document says what the API does: every error is RFC 9457 problem+json.

FastAPI declares validation errors as `application/json` with its own `HTTPValidationError`
shape and nothing else; the handlers in api/problems.py answer problem+json for every error.
`install` rewrites the generated document once: a `Problem` schema, and on every operation the
error statuses it can answer, each as `application/problem+json`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM_JSON = "application/problem+json"

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "422: every invalid field",
            "items": {"type": "object"},
        },
    },
    "additionalProperties": True,
}

DESCRIPTIONS = {
    "400": "Bad Request: the body is not valid JSON",
    "401": "Unauthorized: no valid API key or session token",
    "403": "Forbidden: the call needs an admin API key",
    "404": "Not Found (also another tenant's object)",
    "409": "Conflict",
    "412": "Precondition Failed: If-Match names an older version",
    "413": "Content Too Large: the body is over CAPSTAN_MAX_BODY_BYTES",
    "422": "Unprocessable Content: a parameter or field is invalid (each one named)",
    "429": "Too Many Requests: see Retry-After",
    "500": "Internal Server Error",
    "503": "Service Unavailable: a backend is down; see Retry-After",
}


def _statuses(path: str, method: str) -> list[str]:
    """The error statuses this operation can answer."""
    found = ["422", "500", "503"]
    if path.startswith("/v1/"):
        found += ["401", "429"]
        if method in ("post", "put", "patch"):
            found += ["400", "413"]
        if "{" in path:
            found.append("404")
        if path.startswith("/v1/admin") or path == "/v1/workers" or path == "/v1/tasks":
            found.append("403")
        if method in ("patch", "delete") and path.startswith("/v1/documents/"):
            found.append("412")
        if path.startswith("/v1/admin") or path in ("/v1/tasks", "/v1/tasks/{task_id}/cancel"):
            found.append("409")
    return sorted(set(found))


def problem_responses(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every operation's errors declared as problem+json."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    ref = {"$ref": "#/components/schemas/Problem"}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status in _statuses(path, method):
                responses[status] = {
                    "description": DESCRIPTIONS[status],
                    "content": {PROBLEM_JSON: {"schema": ref}},
                }
            # An error a route declares itself (`responses=` on the decorator) keeps its
            # description and is answered as problem+json too.
            for status, response in responses.items():
                if status[:1] in ("4", "5"):
                    response["content"] = {PROBLEM_JSON: {"schema": ref}}
    return schema


def install(app: FastAPI) -> None:
    """Serve the rewritten document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_responses(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
