"""A Redis client from a URL: `redis://`, `rediss://`, `unix://`, or Redis Sentinel.

Sentinel URLs name the sentinels, the monitored service and the database:

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]
        [?sentinel_password=...]

The password (and user) are the Redis server's; `sentinel_password` is the sentinels' own, if
they require one. The client asks the sentinels for the current primary on every new
connection, so after a failover the next connection (the breaker's retry) reaches the promoted
primary without a restart; a connection still open to a demoted primary fails its first write
(READONLY) and is replaced. The gateway accepts the same URL (gateway/src/cache.ts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class SentinelAddress:
    """What a `redis+sentinel://` URL says."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None
    ssl: bool


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Parse a `redis+sentinel://` URL; ValueError says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Redis Sentinel URL: {parts.scheme}://")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels = []
    for hostport in filter(None, hosts.split(",")):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {hostport!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    segments = [s for s in parts.path.split("/") if s]
    if not sentinels or not segments or len(segments) > 2:
        raise ValueError("a Sentinel URL is redis+sentinel://host:port[,host:port]/service[/db]")
    if len(segments) == 2 and not segments[1].isdigit():
        raise ValueError(f"database {segments[1]!r} is not a number")
    query = parse_qs(parts.query)
    return SentinelAddress(
        sentinels=sentinels,
        service=unquote(segments[0]),
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=query.get("sentinel_password", [None])[0],
        ssl=parts.scheme.startswith("rediss"),
    )


class SentinelRedis(aioredis.Redis):
    """The primary's client; closing it closes its connections to the sentinels too."""

    sentinels_of: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels_of is not None:
            for client in self.sentinels_of.sentinels:
                await client.aclose()


def redis_from_url(url: str, **options: Any) -> aioredis.Redis:
    """A client for the primary behind `url` (plain or Sentinel); `options` are redis-py's."""
    if not url.startswith(tuple(f"{s}://" for s in SENTINEL_SCHEMES)):
        return aioredis.Redis.from_url(url, **options)
    address = parse_sentinel_url(url)
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        address.sentinels,
        sentinel_kwargs={"password": address.sentinel_password, **timeouts},
    )
    client = sentinel.master_for(
        address.service,
        redis_class=SentinelRedis,
        db=address.db,
        username=address.username,
        password=address.password,
        ssl=address.ssl,
        **options,
    )
    assert isinstance(client, SentinelRedis)
    client.sentinels_of = sentinel
    return client


async def primary_url(url: str) -> str:
    """A plain `redis://` URL for the primary the Sentinels name now (other URLs unchanged):
    for tools that take one server (backups, `redis-cli --rdb`)."""
    if not url.startswith(tuple(f"{s}://" for s in SENTINEL_SCHEMES)):
        return url
    address = parse_sentinel_url(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        address.sentinels, sentinel_kwargs={"password": address.sentinel_password}
    )
    try:
        host, port = await sentinel.discover_master(address.service)
    finally:
        for client in sentinel.sentinels:
            await client.aclose()
    auth = ""
    if address.username or address.password:
        auth = f"{quote(address.username or '')}:{quote(address.password or '')}@"
    scheme = "rediss" if address.ssl else "redis"
    return f"{scheme}://{auth}{host}:{port}/{address.db}"
