"""RabbitMQ's management API (HTTP): one client for backups (definitions) and namespace
removal (listing queues and exchanges)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import httpx

from capstan.node_urls import node_urls

DEFAULT_PORT = 15672


def management_url(amqp_url: str, explicit: str = "") -> str:
    """`explicit` (CAPSTAN_BROKER_MANAGEMENT_URL) when set, else the AMQP URL's host and
    credentials on the default management port."""
    if explicit:
        return explicit
    parts = urlsplit(node_urls(amqp_url)[0])
    credentials = f"{parts.username or 'guest'}:{parts.password or 'guest'}"
    return f"http://{credentials}@{parts.hostname or '127.0.0.1'}:{DEFAULT_PORT}"


def management_client(url: str, timeout: float = 60) -> httpx.AsyncClient:
    """A client for the management API at `url` (`http://user:pass@host:port[/prefix]`), with
    the credentials as basic auth; paths start at `/api`."""
    u = urlsplit(url)
    auth = (unquote(u.username), unquote(u.password or "")) if u.username else None
    port = f":{u.port}" if u.port else ""
    base = f"{u.scheme}://{u.hostname}{port}{u.path.rstrip('/')}"
    return httpx.AsyncClient(base_url=base, auth=auth, timeout=timeout)
