"""API key and session token formats; docs/contracts/auth.md is the shared contract."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

API_KEY_PREFIX = "cst_"
SESSION_PREFIX = "csts_"


@dataclass(frozen=True, slots=True)
class NewApiKey:
    key_id: str
    plaintext: str  # shown to the user once, never stored
    key_hash: str


def digest(secret: str) -> str:
    """SHA-256 hex of a high-entropy credential (a slow KDF buys nothing for 256-bit secrets)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> NewApiKey:
    key_id = secrets.token_hex(8)
    plaintext = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewApiKey(key_id, plaintext, digest(plaintext))


def api_key_id(token: str) -> str | None:
    """The key id embedded in an API key, or None when `token` is not shaped like one."""
    if not token.startswith(API_KEY_PREFIX) or token.startswith(SESSION_PREFIX):
        return None
    key_id, sep, secret = token[len(API_KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != 16 or not secret:
        return None
    return key_id


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization` header, by FastAPI's HTTPBearer rule (the API's other
    routes use it): the scheme precedes the first space and is `bearer` in any case; the rest,
    stripped, is the token. Shared with the gateway: tests/contract/vectors.json."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if token and scheme.lower() == "bearer" else None


def new_session_token() -> str:
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def is_session_token(token: str) -> bool:
    return token.startswith(SESSION_PREFIX)
