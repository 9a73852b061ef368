"""Redis: two artifacts.

- `redis-keys.jsonl.gz`, a logical copy of the configured database: every key's `DUMP`
  payload and `PTTL`. `restore` replays it with `RESTORE ... REPLACE` over an ordinary client
  connection, so it works against a remote, running server (no file system access, no restart).
- `redis.rdb`, the whole server's RDB snapshot, for disaster recovery by stop-copy-start (see
  docs/backups.md). It is fetched with `redis-cli --rdb` (the replication protocol: works
  remotely, needs only the client), else by `BGSAVE` and copying the file when the server's
  data directory is readable from here, else skipped with a note in the manifest.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from capstan.backups.progress import BackupError, Reporter, run_tool, step, watch_file

BATCH = 500
# Document cache entries (documents/cache.py): derived from PostgreSQL, never restored by
# default — an entry newer or older than the restored rows would be served as the truth.
CACHE_KEY = re.compile(rb"^capstan:[^:]+:doc:")

RdbMethod = Literal["auto", "redis-cli", "bgsave", "none"]


def _client(url: str) -> aioredis.Redis:
    return aioredis.from_url(url, socket_timeout=30, socket_connect_timeout=10)


async def dump_keys(url: str, out: Path, reporter: Reporter) -> dict[str, Any]:
    """DUMP + PTTL of every key of the URL's database, pipelined in batches."""
    client = _client(url)
    keys = 0
    try:
        try:
            total = int(await client.dbsize())
            info = await client.info("server")
        except RedisError as exc:
            raise BackupError(f"redis: {exc}") from exc
        with (
            step(reporter, "redis keys", total, "keys"),
            gzip.open(out, "wt", encoding="utf-8") as f,
        ):
            batch: list[bytes] = []
            async for key in client.scan_iter(count=BATCH):
                batch.append(key)
                if len(batch) >= BATCH:
                    keys += await _write_batch(client, batch, f)
                    batch = []
                    reporter.update(keys)
            if batch:
                keys += await _write_batch(client, batch, f)
            reporter.update(keys)
    finally:
        await client.aclose()
    return {
        "db": client.connection_pool.connection_kwargs.get("db", 0),
        "keys": keys,
        "redis_version": info.get("redis_version"),
        "taken_at_unix_ms": int(time.time() * 1000),
    }


async def _write_batch(client: aioredis.Redis, keys: list[bytes], f: Any) -> int:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
        pipe.pttl(key)
    results = await pipe.execute()
    written = 0
    for i, key in enumerate(keys):
        payload, ttl = results[2 * i], results[2 * i + 1]
        if payload is None:  # expired or deleted since SCAN saw it
            continue
        record = {
            "key": base64.b64encode(key).decode(),
            "ttl_ms": int(ttl),
            "dump": base64.b64encode(payload).decode(),
        }
        f.write(json.dumps(record, separators=(",", ":")) + "\n")
        written += 1
    return written


def read_keys(path: Path) -> list[tuple[bytes, int, bytes]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [
            (base64.b64decode(r["key"]), int(r["ttl_ms"]), base64.b64decode(r["dump"]))
            for r in map(json.loads, f)
        ]


async def restore_keys(
    url: str, path: Path, reporter: Reporter, *, with_cache: bool = False, flush: bool = True
) -> dict[str, int]:
    """FLUSHDB (the configured database only), then RESTORE every key with its backed-up TTL."""
    records = read_keys(path)
    client = _client(url)
    restored = skipped = 0
    try:
        if flush:
            await client.flushdb()
        with step(reporter, "redis keys", len(records), "keys"):
            for start in range(0, len(records), BATCH):
                pipe = client.pipeline(transaction=False)
                for key, ttl, payload in records[start : start + BATCH]:
                    if not with_cache and CACHE_KEY.match(key):
                        skipped += 1
                        continue
                    pipe.restore(key, max(ttl, 0), payload, replace=True)
                    restored += 1
                await pipe.execute()
                reporter.update(min(start + BATCH, len(records)))
    except RedisError as exc:
        raise BackupError(f"redis restore: {exc}") from exc
    finally:
        await client.aclose()
    return {"restored": restored, "skipped_cache": skipped}


def check_keys_file(path: Path) -> list[str]:
    try:
        read_keys(path)
    except (OSError, EOFError, ValueError, KeyError, gzip.BadGzipFile) as exc:
        return [f"redis keys file is unreadable: {exc}"]
    return []


# ---------------------------------------------------------------- RDB


def _redis_cli_argv(url: str, out: Path) -> tuple[list[str], dict[str, str]]:
    from urllib.parse import unquote, urlparse

    cli = shutil.which("redis-cli")
    assert cli is not None
    u = urlparse(url)
    argv = [cli, "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379)]
    env = dict(os.environ)
    if u.scheme == "rediss":
        argv.append("--tls")
    if u.username:
        argv += ["--user", unquote(u.username)]
    if u.password:
        env["REDISCLI_AUTH"] = unquote(u.password)
    return [*argv, "--no-auth-warning", "--rdb", str(out)], env


async def dump_rdb(url: str, out: Path, reporter: Reporter, method: RdbMethod) -> dict[str, Any]:
    """The server's RDB snapshot; returns source info, or {"skipped": why}."""
    if method == "none":
        return {"skipped": "disabled"}
    if method in ("auto", "redis-cli") and shutil.which("redis-cli"):
        argv, env = _redis_cli_argv(url, out)
        with step(reporter, "redis RDB (redis-cli --rdb)", unit="bytes"):
            async with watch_file(reporter, out):
                await run_tool(argv, env)
        return {"method": "redis-cli --rdb"}
    if method == "redis-cli":
        raise BackupError("redis-cli is not installed (Debian: redis-tools)")
    return await _bgsave_copy(url, out, reporter, required=method == "bgsave")


async def _bgsave_copy(
    url: str, out: Path, reporter: Reporter, *, required: bool
) -> dict[str, Any]:
    client = _client(url)
    try:
        directory = (await client.config_get("dir")).get("dir")
        filename = (await client.config_get("dbfilename")).get("dbfilename")
        source = Path(str(directory)) / str(filename)
        if not os.access(Path(str(directory)), os.R_OK):
            why = f"the server's data directory {directory} is not readable here"
            if required:
                raise BackupError(f"redis BGSAVE copy: {why}")
            return {"skipped": f"no redis-cli, and {why}"}
        with step(reporter, "redis RDB (BGSAVE)", unit="bytes"):
            await _bgsave(client)
            await asyncio.to_thread(shutil.copyfile, source, out)
    except RedisError as exc:
        raise BackupError(f"redis: {exc}") from exc
    finally:
        await client.aclose()
    return {"method": "BGSAVE + copy", "server_file": str(source)}


BGSAVE_TIMEOUT_SECONDS = 3600


async def _bgsave(client: aioredis.Redis) -> None:
    """BGSAVE and wait for that save to finish.

    Completion is a new save counted in INFO's `rdb_saves` (Redis 7), else a new LASTSAVE;
    LASTSAVE alone has one-second resolution and misses a save in the same second as the last.
    A save already running (someone else's) is waited for first, then ours is started.
    """
    try:
        async with asyncio.timeout(BGSAVE_TIMEOUT_SECONDS):
            saves_before: Any = None
            last_before: Any = None
            started = False
            while True:
                info = dict(await client.info("persistence"))
                busy = int(info.get("rdb_bgsave_in_progress", 0))
                if not started and not busy:
                    saves_before = info.get("rdb_saves")
                    last_before = await client.lastsave()
                    await client.bgsave()
                    started = True
                elif started and not busy:
                    if saves_before is not None:
                        if int(info["rdb_saves"]) > int(saves_before):
                            break
                    elif await client.lastsave() != last_before:
                        break
                await asyncio.sleep(0.05)
    except TimeoutError as exc:
        raise BackupError(f"redis BGSAVE did not finish in {BGSAVE_TIMEOUT_SECONDS}s") from exc
    status = info.get("rdb_last_bgsave_status")
    if status != "ok":
        raise BackupError(f"redis BGSAVE failed: rdb_last_bgsave_status={status}")


async def check_rdb(path: Path) -> list[str]:
    """`redis-check-rdb` when it is installed (it ships with redis-tools)."""
    tool = shutil.which("redis-check-rdb")
    if tool is None:
        return []
    try:
        await run_tool([tool, str(path)])
    except BackupError as exc:
        return [f"redis RDB is damaged: {exc}"]
    return []
