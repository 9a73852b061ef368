"""PostgreSQL: `pg_dump -Fc` from an exported snapshot, table statistics from the same snapshot,
`pg_restore` into a scratch database (verify) or a fresh database swapped in (restore)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg
from sqlalchemy.engine import URL, make_url

from capstan.backups.progress import BackupError, Reporter, run_tool, step, watch_file
from capstan.db.dialect import dialect_for

TableStats = dict[str, dict[str, Any]]

# Row text must not depend on the session: fix every setting that changes `row::text`.
DETERMINISTIC = (
    "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
    "SET extra_float_digits = 3; SET bytea_output = 'hex'"
)

TABLES_SQL = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Conn:
    """A libpq target: a URI without the password (argv is visible in `ps`) and an env."""

    url: URL

    @property
    def database(self) -> str:
        return str(self.url.database or "")

    def with_database(self, name: str) -> Conn:
        return Conn(self.url.set(database=name))

    def libpq_uri(self) -> str:
        u = self.url
        user = quote(u.username or "", safe="")
        host = u.host or ""
        port = f":{u.port}" if u.port else ""
        auth = f"{user}@" if user else ""
        query = "&".join(f"{k}={v}" for k, v in u.query.items() if isinstance(v, str))
        return f"postgresql://{auth}{host}{port}/{quote(self.database, safe='')}" + (
            f"?{query}" if query else ""
        )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.url.password:
            env["PGPASSWORD"] = str(self.url.password)
        return env

    async def connect(self) -> asyncpg.Connection:
        u = self.url
        try:
            return await asyncpg.connect(
                host=u.host,
                port=u.port,
                user=u.username,
                password=u.password,
                database=u.database,
                timeout=30,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise BackupError(
                f"cannot connect to PostgreSQL database {self.database}: {exc}"
            ) from exc


async def primary_of(url: str) -> str:
    """For a libpq host list (`u:p@h1:5432,h2:5432/db`, docs/deployment.md "Scale-out"), the URL
    of the one host that accepts writes now: pg_dump and pg_restore talk to one server. A
    single-host URL is returned unchanged."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "target_session_attrs"])
    errors = []
    for host in filter(None, hosts.split(",")):
        candidate = urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}", query=query))
        try:
            conn = await conn_from_url(candidate).connect()
        except BackupError as exc:
            errors.append(str(exc))
            continue
        try:
            if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                return candidate
            errors.append(f"{host} is a standby")
        finally:
            await conn.close()
    raise BackupError(f"no PostgreSQL primary among {hosts}: {'; '.join(errors)}")


def _is_server_url(url: str) -> bool:
    try:
        return not dialect_for(url).is_file
    except ValueError:
        return False


def conn_from_url(url: str) -> Conn:
    parsed = make_url(url)
    if not _is_server_url(url):
        raise BackupError(f"not a PostgreSQL URL: {parsed.render_as_string()}")
    return Conn(parsed.set(drivername="postgresql"))


def find_tool(name: str, server_major: int) -> str:
    """pg_dump/pg_restore matching the server: /usr/lib/postgresql/<major>/bin, else PATH."""
    own = Path(f"/usr/lib/postgresql/{server_major}/bin/{name}")
    if own.is_file() and os.access(own, os.X_OK):
        return str(own)
    on_path = shutil.which(name)
    if on_path is None:
        raise BackupError(
            f"{name} for PostgreSQL {server_major} not found: install postgresql-client-"
            f"{server_major} (it provides /usr/lib/postgresql/{server_major}/bin/{name})"
        )
    return on_path


async def check_tool_version(tool: str, server_major: int) -> None:
    out = await run_tool([tool, "--version"])
    found = re.search(r"(\d+)(?:\.\d+)?", out)
    major = int(found.group(1)) if found else 0
    if major < server_major:
        raise BackupError(
            f"{tool} is version {major} but the server is PostgreSQL {server_major}: a dump needs "
            f"pg_dump of the server's major version or newer (install postgresql-client-"
            f"{server_major})"
        )


async def server_major(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SHOW server_version_num")) // 10000


async def table_stats(conn: asyncpg.Connection) -> TableStats:
    """Rows and an order-independent content checksum per table (sum of 60-bit row hashes)."""
    await conn.execute(DETERMINISTIC)
    stats: TableStats = {}
    for rec in await conn.fetch(TABLES_SQL):
        qualified = f'"{rec["schema"]}"."{rec["name"]}"'.replace("\x00", "")
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(('x' || substr(md5(t::text), 1, 15))"
            f"::bit(60)::bigint), 0)::text AS h FROM {qualified} AS t"
        )
        assert row is not None
        stats[f"{rec['schema']}.{rec['name']}"] = {"rows": int(row["n"]), "checksum": row["h"]}
    return stats


async def dump(url: str, out: Path, reporter: Reporter) -> dict[str, Any]:
    """`pg_dump -Fc` into `out`; statistics from the very snapshot pg_dump reads."""
    target = conn_from_url(await primary_of(url))
    conn = await target.connect()
    try:
        major = await server_major(conn)
        version = str(await conn.fetchval("SHOW server_version"))
        tool = find_tool("pg_dump", major)
        await check_tool_version(tool, major)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = str(await conn.fetchval("SELECT pg_export_snapshot()"))
            argv = [
                tool,
                "--format=custom",
                f"--snapshot={snapshot}",
                f"--file={out}",
                f"--dbname={target.libpq_uri()}",
            ]
            with step(reporter, f"pg_dump {target.database}", unit="bytes"):
                async with watch_file(reporter, out):
                    dumped = asyncio.create_task(run_tool(argv, target.env()))
                    stats = await table_stats(conn)
                    await dumped
    finally:
        await conn.close()
    return {
        "database": target.database,
        "host": target.url.host,
        "port": target.url.port,
        "server_version": version,
        "server_major": major,
        "pg_dump": tool,
        "tables": stats,
    }


async def _admin(target: Conn, sql: str) -> None:
    conn = await target.connect()
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def scratch_name(prefix: str, backup_id: str) -> str:
    clean = re.sub(r"[^a-z0-9_]", "_", backup_id.lower())
    return f"{prefix}_{clean}_{uuid.uuid4().hex[:6]}"[:63]


@contextlib.asynccontextmanager
async def scratch_database(target: Conn, name: str) -> AsyncIterator[Conn]:
    """A new, empty database on the same server, dropped on exit (even after a failure)."""
    await _admin(target, f"CREATE DATABASE {_ident(name)} TEMPLATE template0")
    try:
        yield target.with_database(name)
    finally:
        await _admin(target, f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")


async def pg_restore(target: Conn, dump_file: Path, *, clean: bool = False) -> None:
    conn = await target.connect()
    try:
        major = await server_major(conn)
    finally:
        await conn.close()
    tool = find_tool("pg_restore", major)
    argv = [
        tool,
        "--exit-on-error",
        "--single-transaction",
        "--no-owner",
        "--no-acl",
        f"--dbname={target.libpq_uri()}",
    ]
    if clean:
        argv += ["--clean", "--if-exists"]
    await run_tool([*argv, str(dump_file)], target.env())


async def stats_of(target: Conn) -> TableStats:
    conn = await target.connect()
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await table_stats(conn)
    finally:
        await conn.close()


def compare(expected: TableStats, found: TableStats) -> list[str]:
    """Differences between two sets of table statistics, as sentences."""
    problems = []
    for table in sorted(set(expected) | set(found)):
        want, got = expected.get(table), found.get(table)
        if want is None:
            problems.append(f"{table}: present after restore but not in the backup")
        elif got is None:
            problems.append(f"{table}: missing after restore")
        elif want["rows"] != got["rows"]:
            problems.append(f"{table}: {got['rows']} rows, the backup has {want['rows']}")
        elif want["checksum"] != got["checksum"]:
            problems.append(f"{table}: content checksum differs")
    return problems


async def verify(url: str, dump_file: Path, backup_id: str, expected: TableStats) -> list[str]:
    """Restore into `capstan_verify_<id>_<rand>`, compare with the manifest, drop it."""
    target = conn_from_url(await primary_of(url))
    async with scratch_database(target, scratch_name("capstan_verify", backup_id)) as scratch:
        try:
            await pg_restore(scratch, dump_file)
        except BackupError as exc:
            return [f"pg_restore into a scratch database failed: {exc}"]
        return compare(expected, await stats_of(scratch))


async def restore_swap(url: str, dump_file: Path, backup_id: str, expected: TableStats) -> str:
    """Restore into a fresh database, check it, then swap it in by renaming.

    The live database is untouched until the copy is complete and matches the manifest; it is
    kept as `<name>_pre_<id>` with connections disallowed. Returns that name.
    """
    target = conn_from_url(await primary_of(url))
    live = target.database
    fresh = scratch_name(f"{live[:30]}_restore", backup_id)
    kept = scratch_name(f"{live[:30]}_pre", backup_id)
    maintenance = target.with_database("postgres")
    await _admin(maintenance, f"CREATE DATABASE {_ident(fresh)} TEMPLATE template0")
    try:
        await pg_restore(target.with_database(fresh), dump_file)
        problems = compare(expected, await stats_of(target.with_database(fresh)))
        if problems:
            raise BackupError("restored copy does not match the backup: " + "; ".join(problems))
        conn = await maintenance.connect()
        try:
            await conn.execute(f"ALTER DATABASE {_ident(live)} ALLOW_CONNECTIONS false")
            for _attempt in range(50):
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    live,
                )
                try:
                    await conn.execute(f"ALTER DATABASE {_ident(live)} RENAME TO {_ident(kept)}")
                    break
                except asyncpg.ObjectInUseError:
                    await asyncio.sleep(0.1)
            else:
                await conn.execute(f"ALTER DATABASE {_ident(live)} ALLOW_CONNECTIONS true")
                raise BackupError(f"database {live} stayed in use; nothing was changed")
            try:
                await conn.execute(f"ALTER DATABASE {_ident(fresh)} RENAME TO {_ident(live)}")
            except BaseException:
                # Put the live database back exactly as it was.
                await conn.execute(f"ALTER DATABASE {_ident(kept)} RENAME TO {_ident(live)}")
                await conn.execute(f"ALTER DATABASE {_ident(live)} ALLOW_CONNECTIONS true")
                raise
        finally:
            await conn.close()
    except BaseException:
        await _admin(maintenance, f"DROP DATABASE IF EXISTS {_ident(fresh)} WITH (FORCE)")
        raise
    return kept


async def restore_in_place(url: str, dump_file: Path, expected: TableStats) -> list[str]:
    """`pg_restore --clean --if-exists --single-transaction` into the live database."""
    target = conn_from_url(await primary_of(url))
    await pg_restore(target, dump_file, clean=True)
    return compare(expected, await stats_of(target))
