"""Redis adapters. Key layout and value format are a contract shared with the Node gateway:
see docs/contracts/cache.md before changing anything here."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.resources import files
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from capstan.cache.connect import redis_from_url
from capstan.cache.port import (
    CachedEntry,
    CacheRead,
    CacheUnavailable,
    LimitedRead,
    RateDecision,
    Session,
)

T = TypeVar("T")


def load_script(name: str) -> str:
    """One of the cache contract's Lua scripts: `capstan/cache/lua/<name>`, package data.

    These files are the only copy; the gateway's build copies them into gateway/dist/lua and
    it registers the same text (docs/contracts/cache.md, tests/unit/test_cache_scripts.py)."""
    return files("capstan.cache").joinpath("lua").joinpath(name).read_text(encoding="utf-8")


_FILL = load_script("cache_fill.lua")
_READ = load_script("cache_read.lua")
_GENERATION = load_script("cache_generation.lua")
_INVALIDATE = load_script("cache_invalidate.lua")
_GCRA = load_script("rate_limit.lua")
_LIMITED_READ = load_script("rate_limited_read.lua")


class RedisLink:
    """One client shared by the Redis adapters, with a breaker.

    After a connection failure every call fails fast with CacheUnavailable for
    `retry_seconds`, so an outage costs callers one timeout, not one per request.
    """

    def __init__(self, url: str, *, timeout_seconds: float = 0.5, retry_seconds: float = 1.0):
        self.client: aioredis.Redis = redis_from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            health_check_interval=30,
            max_connections=200,
        )
        self._retry_seconds = retry_seconds
        self._down_until = 0.0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def call(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        if not self.available:
            raise CacheUnavailable("redis is unavailable (breaker open)")
        return await self._attempt(op)

    async def _attempt(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        try:
            result = await op(self.client)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._down_until = time.monotonic() + self._retry_seconds
            raise CacheUnavailable(f"redis: {exc}") from exc
        self._down_until = 0.0
        return result

    async def ping(self) -> None:
        """Probe Redis even while the breaker is open; success closes it."""
        await self._attempt(lambda c: c.ping())

    async def close(self) -> None:
        await self.client.aclose()


GENERATION_KEY = "capstan:cache:generation"


def cache_read(version: Any, payload: Any, generation: Any) -> CacheRead:
    """CacheRead from the reply of cache_read.lua (or the tail of rate_limited_read.lua)."""
    known = None if generation is None else int(generation)
    if version is None or payload is None:
        return CacheRead(None, known)
    body = payload if isinstance(payload, bytes) else payload.encode()
    return CacheRead(CachedEntry(int(version), body), known)


class RedisCache:
    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._fill = link.client.register_script(_FILL)
        self._read = link.client.register_script(_READ)
        self._invalidate = link.client.register_script(_INVALIDATE)
        self._generation = link.client.register_script(_GENERATION)

    async def get(self, key: str) -> CacheRead:
        keys = [key, GENERATION_KEY]
        version, payload, generation = await self._link.call(lambda _c: self._read(keys=keys))
        return cache_read(version, payload, generation)

    async def fill(
        self, key: str, version: int, payload: bytes, ttl_seconds: int, generation: int
    ) -> bool:
        args: list[Any] = [version, payload, ttl_seconds * 1000, generation]
        keys = [key, GENERATION_KEY]
        stored = await self._link.call(lambda _c: self._fill(keys=keys, args=args))
        return bool(stored)

    async def invalidate(self, key: str, version: int, ttl_seconds: int) -> None:
        args = [version, ttl_seconds * 1000]
        await self._link.call(lambda _c: self._invalidate(keys=[key], args=args))

    async def install_generation(self, generation: int) -> int:
        now = await self._link.call(
            lambda _c: self._generation(keys=[GENERATION_KEY], args=[generation])
        )
        return int(now)

    async def ping(self) -> None:
        await self._link.ping()


class RedisSessionStore:
    def __init__(self, link: RedisLink) -> None:
        self._link = link

    @staticmethod
    def key(token_hash: str) -> str:
        return f"capstan:session:{token_hash}"

    async def put(self, token_hash: str, session: Session, ttl_seconds: int) -> None:
        value = json.dumps(
            {
                "tenant_id": session.tenant_id,
                "key_id": session.key_id,
                "created_at": session.created_at,
            }
        )
        await self._link.call(lambda c: c.set(self.key(token_hash), value, ex=ttl_seconds))

    async def get(self, token_hash: str) -> Session | None:
        raw = await self._link.call(lambda c: c.get(self.key(token_hash)))
        if raw is None:
            return None
        data = json.loads(raw)
        return Session(data["tenant_id"], data["key_id"], float(data["created_at"]))

    async def delete(self, token_hash: str) -> bool:
        removed = await self._link.call(lambda c: c.delete(self.key(token_hash)))
        return bool(removed)

    # --- per-key index (issue 14): a set of token hashes per API key ---
    @staticmethod
    def index_key(key_id: str) -> str:
        return f"capstan:session-index:{key_id}"

    async def index_for_key(self, key_id: str, token_hash: str, ttl_seconds: int) -> None:
        async def add(c: aioredis.Redis) -> None:
            async with c.pipeline(transaction=False) as pipe:
                pipe.sadd(self.index_key(key_id), token_hash)
                # Sessions share one TTL, so the newest one's outlives all the others.
                pipe.expire(self.index_key(key_id), ttl_seconds)
                await pipe.execute()

        await self._link.call(add)

    async def delete_for_key(self, key_id: str) -> int:
        async def drop(c: aioredis.Redis) -> int:
            members = list(await c.smembers(self.index_key(key_id)))
            if not members:
                return 0
            async with c.pipeline(transaction=False) as pipe:
                pipe.delete(*(self.key(m.decode() if isinstance(m, bytes) else m) for m in members))
                # SREM, not DEL: a session indexed meanwhile stays findable.
                pipe.srem(self.index_key(key_id), *members)
                removed, _ = await pipe.execute()
            return int(removed)

        return await self._link.call(drop)


class RedisRateLimiter:
    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._gcra = link.client.register_script(_GCRA)

    async def hit(self, key: str, rate_per_minute: int, burst: int) -> RateDecision:
        args = _gcra_args(rate_per_minute, burst)
        allowed, remaining, retry = await self._link.call(
            lambda _c: self._gcra(keys=[rate_limit_key(key)], args=args)
        )
        return RateDecision(bool(allowed), int(remaining), float(retry))


def rate_limit_key(key: str) -> str:
    return f"capstan:ratelimit:{key}"


def _gcra_args(rate_per_minute: int, burst: int) -> list[float]:
    """ARGV of the GCRA scripts: emission interval and burst tolerance, in seconds."""
    interval = 60.0 / rate_per_minute
    return [interval, interval * (burst - 1)]


class RedisRateLimitedReader:
    """RedisRateLimiter.hit then RedisCache.get as one script (rate_limited_read.lua).

    Auto-pipelined: calls made while a batch is on the wire wait and go together in the next
    one, one write and one read for all of them. Each call is still its own EVALSHA, which
    Redis runs atomically, so every rate decision is as exact as the limiter's; under load the
    per-request cost of the round trip (a syscall each way, redis-py's per-command work) is
    shared. A lone call is sent at once.
    """

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._script = link.client.register_script(_LIMITED_READ)
        self._waiting: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def hit_and_get(
        self, rate_key: str, rate_per_minute: int, burst: int, cache_key: str
    ) -> LimitedRead:
        reply = await self._call(
            [
                rate_limit_key(rate_key),
                cache_key,
                GENERATION_KEY,
                *_gcra_args(rate_per_minute, burst),
            ]
        )
        decision = RateDecision(bool(reply[0]), int(reply[1]), float(reply[2]))
        if len(reply) != 6:  # a refusal stops after the decision
            return LimitedRead(decision, None)
        read = cache_read(reply[3], reply[4], reply[5])
        return LimitedRead(decision, read.entry, read.generation)

    async def _call(self, keys_and_args: list[Any]) -> Any:
        if not self._link.available:
            raise CacheUnavailable("redis is unavailable (breaker open)")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys_and_args, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_waiting())
        return await future

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                calls = [keys_and_args for keys_and_args, _ in batch]
                try:
                    replies = await self._link.call(partial(self._evalsha, calls=calls))
                except Exception as exc:  # CacheUnavailable, or a bug: every caller hears it
                    replies = [exc] * len(batch)
                for (_, future), reply in zip(batch, replies, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._sender = None

    async def _evalsha(self, client: aioredis.Redis, calls: list[list[Any]]) -> list[Any]:
        replies = await self._pipeline(client, calls)
        forgotten = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if forgotten:  # a restarted or flushed Redis: load the script, run those calls again
            await client.script_load(self._script.script)
            again = await self._pipeline(client, [calls[i] for i in forgotten])
            for i, reply in zip(forgotten, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, client: aioredis.Redis, calls: list[list[Any]]) -> list[Any]:
        # EVALSHA, not the Script object: a pipeline holding Scripts checks SCRIPT EXISTS first,
        # a second round trip per batch.
        pipe = client.pipeline(transaction=False)
        for keys_and_args in calls:
            pipe.evalsha(self._script.sha, 3, *keys_and_args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
