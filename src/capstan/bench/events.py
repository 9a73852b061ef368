"""`capstan bench events`: commit -> every subscriber done, at steady offered rates.

One run, against the PostgreSQL, Redis and RabbitMQ that `scripts/services up` runs:

1. a scratch database (migrated, one tenant) and a broker namespace of its own
   (`CAPSTAN_BROKER_NAMESPACE=bench_<random>`), so its exchanges and queues meet nobody else's;
2. `capstan subscriber all` and `capstan relay` as two processes (the production topology),
   `CAPSTAN_LOG_LEVEL=WARNING`, each with its /metrics on a free port;
3. in this process, writers that go through the real write path (`DocumentStore` from
   `build_container`, one transaction = the row + its outbox event, then the Redis
   invalidation of updates) on an open-loop schedule: write i starts at t0 + i/rate whatever
   happened to the others, from a bounded pool of concurrent writers; half creates, half
   updates of documents created during the warmup;
4. per step: wait until every event is done by every subscriber bound to it, then read per
   event the envelope `time` (commit), `outbox.published_at` (relay) and each subscriber's
   `processed_events.processed_at` from the database;
5. prints p50/p99 per rate, the sustained verdict per step and PASS/MISS against the design
   target (p99 < 100 ms at 500 events/s), writes JSON under bench/results/;
6. stops the processes, deletes the namespace's exchanges and queues, the bench's Redis keys
   and the scratch database, also on Ctrl-C, SIGTERM or an error.

See bench/README.md ("capstan bench events").
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from capstan.bench.common import (
    SERVICES_HINT,
    Backends,
    BenchError,
    admin,
    check_backends,
    cpu_seconds,
    free_port,
    git_commit,
    redact,
    resolve_backends,
    seed_tenant,
    sigterm_as_interrupt,
    with_database,
)
from capstan.bench.latency import (
    DRAIN_GRACE_S,
    MIN_ACHIEVED_SHARE,
    TREND_FACTOR,
    TREND_SLACK_MS,
    EventTimes,
    analyze_step,
    expected_subscribers,
    max_sustained,
    parse_rates,
    schedule,
    summary_ms,
    write_kind,
)

if TYPE_CHECKING:
    from capstan.container import Container

out = Console()
err = Console(stderr=True)

T = TypeVar("T")

# Design target from the issue; informational: missing it does not fail the command.
TARGET_RATE = 500
TARGET_P99_MS = 100.0

ROLE_LOG_LEVEL = "WARNING"
UPDATE_SHARE = 0.5  # half the writes update an existing document, half create one
WARMUP_DOCUMENTS = 1000  # created before the first step: warmup, and the documents updated
WARMUP_RATE = 200
DRAIN_POLL_S = 0.25
ROLE_CPU_COMMS = ("postgres", "beam.smp", "redis-server")  # servers whose CPU we attribute

BODY = ("An event benchmark document: one row and its outbox event per write. " * 4).strip()


@dataclass
class Options:
    rates: list[int]
    duration: int
    writers: int
    drain_timeout: int
    started_at: datetime
    split_subscribers: bool = False


# ---------------------------------------------------------------- servers


def resolve_amqp(env: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The RabbitMQ URL: CAPSTAN_BROKER_URL if it is amqp://, else CAPSTAN_TEST_AMQP_URL."""
    for var in ("CAPSTAN_BROKER_URL", "CAPSTAN_TEST_AMQP_URL"):
        url = env.get(var, "")
        if url.startswith(("amqp://", "amqps://")):
            return url, var
    raise BenchError(
        "CAPSTAN_TEST_AMQP_URL (or an amqp:// CAPSTAN_BROKER_URL) not set: the benchmark needs "
        f"a real RabbitMQ; {SERVICES_HINT}"
    )


async def _check_amqp(url: str, var: str) -> str:
    import aio_pika

    try:
        conn = await aio_pika.connect(url, timeout=5)
    except Exception as exc:
        raise BenchError(
            f"RabbitMQ at {redact(url)} ({var}) is unreachable: "
            f"{exc or type(exc).__name__}; {SERVICES_HINT}"
        ) from exc
    try:
        props: Any = conn.transport.connection.server_properties if conn.transport else {}
        version = props.get("version", b"unknown")
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return "unknown"
    finally:
        await conn.close()


def broker_names(
    namespace: str, subscribers: list[str], retry_ms: list[int]
) -> dict[str, list[str]]:
    """Every exchange and queue a namespace can have (docs/contracts/events.md)."""
    queues: list[str] = []
    for name in subscribers:
        base = f"{namespace}.sub.{name}"
        queues += [base, f"{base}.dead", *(f"{base}.retry.{ms}" for ms in retry_ms)]
    return {"exchanges": [f"{namespace}.events", f"{namespace}.realtime"], "queues": queues}


async def _delete_namespace(url: str, names: dict[str, list[str]]) -> list[str]:
    """Delete the namespace's queues and exchanges; the names that could not be deleted."""
    import aio_pika

    failed: list[str] = []
    conn = await aio_pika.connect(url, timeout=5)
    try:
        channel = await conn.channel()
        for queue in names["queues"]:
            try:
                await channel.queue_delete(queue)
            except Exception:
                failed.append(queue)
                channel = await conn.channel()  # an error closes the channel
        for exchange in names["exchanges"]:
            try:
                await channel.exchange_delete(exchange)
            except Exception:
                failed.append(exchange)
                channel = await conn.channel()
        await channel.close()
    finally:
        await conn.close()
    return failed


def _leftovers(url: str, namespace: str) -> dict[str, list[str]] | None:
    """Queues and exchanges still under the namespace, per the management API (None if it
    does not answer). The namespace is the bench's own, so all of them are ours."""
    import httpx

    parts = urlsplit(url)
    vhost = quote(unquote(parts.path.lstrip("/")) or "/", safe="")
    auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    base = f"http://{parts.hostname or '127.0.0.1'}:15672/api"
    found: dict[str, list[str]] = {}
    try:
        for kind in ("queues", "exchanges"):
            r = httpx.get(f"{base}/{kind}/{vhost}", auth=auth, timeout=5)
            r.raise_for_status()
            found[kind] = [x["name"] for x in r.json() if x["name"].startswith(namespace + ".")]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return found


async def _forget_keys(cache_url: str, pattern: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(cache_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
    finally:
        await client.aclose()


# ---------------------------------------------------------------- the role processes


class Role:
    """`capstan relay` or `capstan subscriber all` in its own process and session."""

    def __init__(self, label: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.label = label
        self.metrics_port = int(env["CAPSTAN_METRICS_PORT"])
        self.command = [sys.executable, "-m", "capstan.cli.main", *args]
        self._log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_summary(self) -> dict[str, Any]:
        """How many lines the role logged at WARNING and above, and the last few."""
        try:
            lines = self._log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        return {"lines": len(lines), "last": lines[-5:]}

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"`{' '.join(self.command[3:])}` exited with code {self.proc.returncode}:\n"
                + self.log_tail()
            )

    async def wait_metrics(self, timeout_s: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.metrics_url)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise BenchError(f"{self.label}: /metrics did not answer within {timeout_s:g}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


async def _wait_consumers(url: str, queues: list[str], timeout_s: float = 60) -> None:
    """Until every queue exists and has a consumer (the subscribers are listening)."""
    import aio_pika

    deadline = time.monotonic() + timeout_s
    conn = await aio_pika.connect(url, timeout=5)
    try:
        waiting = list(queues)
        while waiting and time.monotonic() < deadline:
            channel = await conn.channel()
            try:
                queue = await channel.declare_queue(waiting[0], passive=True)
                if queue.declaration_result.consumer_count:
                    waiting.pop(0)
                    continue
            except aio_pika.exceptions.ChannelClosed:
                pass  # not declared yet
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            await asyncio.sleep(0.2)
        if waiting:
            raise BenchError(f"no consumer on {', '.join(waiting)} within {timeout_s:g}s")
    finally:
        await conn.close()


# ---------------------------------------------------------------- CPU accounting


def _system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def _server_cpu() -> dict[tuple[str, int], float]:
    """CPU seconds so far of every PostgreSQL, RabbitMQ and Redis process, by (name, pid)."""
    totals: dict[tuple[str, int], float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        if comm in ROLE_CPU_COMMS:
            fields = raw.rsplit(")", 1)[1].split()
            totals[(comm, int(entry.name))] = (int(fields[11]) + int(fields[12])) / tick
    return totals


@dataclass
class CpuSnapshot:
    at: float
    system: tuple[float, float]
    roles: dict[str, float]
    servers: dict[tuple[str, int], float]
    bench: float

    @classmethod
    def take(cls, roles: list[Role]) -> CpuSnapshot:
        role_cpu: dict[str, float] = {}
        for role in roles:
            with contextlib.suppress(OSError):
                role_cpu[role.label] = cpu_seconds(role.proc.pid)
        return cls(time.monotonic(), _system_cpu(), role_cpu, _server_cpu(), time.process_time())

    def share_since(self, before: CpuSnapshot) -> dict[str, float]:
        """Cores used per process group between two snapshots (1.0 = one core busy)."""
        wall = max(self.at - before.at, 1e-9)
        busy = self.system[0] - before.system[0]
        total = max(self.system[1] - before.system[1], 1e-9)
        machine = busy / total * (os.cpu_count() or 1)
        shares = {"machine": round(machine, 3)}
        shares["bench_writers"] = round((self.bench - before.bench) / wall, 3)
        for label, value in self.roles.items():
            shares[label] = round((value - before.roles.get(label, value)) / wall, 3)
        # Per process: one born during the interval counts whole; one that exited is lost.
        for comm in ROLE_CPU_COMMS:
            used = sum(
                value - before.servers.get(key, 0.0)
                for key, value in self.servers.items()
                if key[0] == comm
            )
            shares[comm] = round(used / wall, 3)
        shares["other"] = round(
            max(machine - sum(v for k, v in shares.items() if k != "machine"), 0.0), 3
        )
        return shares


# ---------------------------------------------------------------- metrics of the roles


async def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(url)).text
    wanted = (
        "capstan_event_end_to_end_seconds",
        "capstan_events_consumed",
        "capstan_relay_batch_size",
        "capstan_subscriber_handle_duration_seconds",
        "capstan_relay_publish_failures",
    )
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape_all(roles: list[Role]) -> Samples:
    """Every role's samples, summed (each process counts its own)."""
    total: Samples = {}
    for role in roles:
        for key, value in (await _scrape(role.metrics_url)).items():
            total[key] = total.get(key, 0.0) + value
    return total


def metrics_view(before: Samples, after: Samples) -> dict[str, Any]:
    """What the roles counted during a step: outcomes per subscriber, the share of events each
    subscriber acknowledged within 100 ms (its own end-to-end histogram, taken after the ack),
    mean handling time, and the relay's mean batch size."""

    def delta(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    outcomes: dict[str, dict[str, int]] = {}
    within: dict[str, dict[str, float]] = {}
    handle: dict[str, float] = {}
    relay: dict[str, float] = {}
    for key in after:
        name, labels = key[0], dict(key[1])
        d = delta(key)
        if name == "capstan_events_consumed_total" and d > 0:
            outcomes.setdefault(labels["subscriber"], {})[labels["outcome"]] = int(d)
        elif name == "capstan_event_end_to_end_seconds_bucket" and labels.get("le") == "0.1":
            sub = labels["subscriber"]
            count = delta(("capstan_event_end_to_end_seconds_count", (("subscriber", sub),)))
            if count > 0:
                within[sub] = {"acked": int(count), "share_within_100ms": round(d / count, 4)}
        elif name == "capstan_subscriber_handle_duration_seconds_sum":
            sub = labels["subscriber"]
            count = delta(("capstan_subscriber_handle_duration_seconds_count", key[1]))
            if count > 0:
                handle[sub] = round(d / count * 1000, 2)
        elif name == "capstan_relay_batch_size_sum":
            count = delta(("capstan_relay_batch_size_count", ()))
            if count > 0:
                relay = {"batches": int(count), "mean_batch_size": round(d / count, 1)}
        elif name == "capstan_relay_publish_failures_total" and d > 0:
            relay["publish_failures"] = int(d)
    return {
        "consumed": outcomes,
        "ack_latency_histogram": within,
        "mean_handle_ms": handle,
        "relay": relay,
    }


# ---------------------------------------------------------------- load


@dataclass
class WriteStats:
    scheduled: int
    written: int = 0
    errors: int = 0
    skipped: int = 0  # scheduled but not started before the step's deadline
    error_samples: list[str] = field(default_factory=list)
    write_ms: list[float] = field(default_factory=list)
    start_lateness_ms: list[float] = field(default_factory=list)
    created_ids: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def achieved_rate(self) -> float:
        return self.written / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheduled": self.scheduled,
            "written": self.written,
            "errors": self.errors,
            "skipped_late": self.skipped,
            "error_samples": self.error_samples[:5],
            "elapsed_s": round(self.elapsed_s, 3),
            "write": summary_ms(self.write_ms),
            "start_lateness": summary_ms(self.start_lateness_ms),
        }


async def generate(
    container: Container,
    tenant_id: str,
    *,
    rate: float,
    duration_s: float,
    writers: int,
    update_share: float,
    update_ids: list[str],
    on_write: Callable[[], None] = lambda: None,
) -> WriteStats:
    """Open loop: write i starts at t0 + i/rate (or as soon as a writer is free after that);
    writes not started by t0 + duration + 1 s are skipped, so an overloaded step ends on time."""
    from capstan.documents.schemas import DocumentCreate, DocumentUpdate

    offsets = schedule(rate, duration_s)
    stats = WriteStats(scheduled=len(offsets))
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05
    deadline = t0 + duration_s + 1.0
    next_index = 0
    last_done = t0
    store = container.documents

    async def writer() -> None:
        nonlocal next_index, last_done
        while next_index < len(offsets):
            i = next_index
            next_index += 1
            due = t0 + offsets[i]
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            started = loop.time()
            if started > deadline:
                stats.skipped += 1
                continue
            stats.start_lateness_ms.append(max(started - due, 0.0) * 1000)
            try:
                if update_ids and write_kind(i, update_share) == "update":
                    doc_id = update_ids[int(i * update_share) % len(update_ids)]
                    await store.update(
                        tenant_id, doc_id, DocumentUpdate(title=f"bench update {i}", body=BODY)
                    )
                else:
                    doc = await store.create(
                        tenant_id,
                        DocumentCreate(
                            collection="bench", title=f"bench create {i}", body=BODY, tags=["b"]
                        ),
                    )
                    stats.created_ids.append(doc.id)
                stats.written += 1
            except Exception as exc:
                stats.errors += 1
                if len(stats.error_samples) < 5:
                    stats.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
            finished = loop.time()
            stats.write_ms.append((finished - started) * 1000)
            last_done = max(last_done, finished)
            on_write()

    await asyncio.gather(*(writer() for _ in range(writers)))
    stats.elapsed_s = max(last_done - t0, duration_s)
    return stats


# ---------------------------------------------------------------- reading the outcome


async def _max_outbox_id(container: Container) -> int:
    from sqlalchemy import text

    async with container.engine.connect() as conn:
        return int(await conn.scalar(text("SELECT coalesce(max(id), 0) FROM outbox")) or 0)


async def _progress(
    container: Container, lo: int, hi: int, patterns: Mapping[str, tuple[str, ...]]
) -> tuple[int, int, int, int]:
    """(events, published, subscriber effects expected, subscriber effects recorded)."""
    from sqlalchemy import text

    async with container.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT routing_key, count(*), count(published_at) FROM outbox "
                    "WHERE id > :lo AND id <= :hi GROUP BY routing_key"
                ),
                {"lo": lo, "hi": hi},
            )
        ).all()
        done = await conn.scalar(
            text(
                "SELECT count(*) FROM processed_events p JOIN outbox o ON o.event_id = p.event_id "
                "WHERE o.id > :lo AND o.id <= :hi AND p.subscriber = ANY(:subs)"
            ),
            {"lo": lo, "hi": hi, "subs": list(patterns)},
        )
    events = sum(int(r[1]) for r in rows)
    published = sum(int(r[2]) for r in rows)
    expected = sum(int(r[1]) * len(expected_subscribers(str(r[0]), patterns)) for r in rows)
    return events, published, expected, int(done or 0)


async def _collect(container: Container, lo: int, hi: int) -> list[EventTimes]:
    from sqlalchemy import text

    async with container.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT o.event_id, o.routing_key, o.envelope->>'time', o.published_at, "
                    "p.subscriber, p.processed_at FROM outbox o "
                    "LEFT JOIN processed_events p ON p.event_id = o.event_id "
                    "WHERE o.id > :lo AND o.id <= :hi"
                ),
                {"lo": lo, "hi": hi},
            )
        ).all()
    events: dict[str, EventTimes] = {}
    for event_id, routing_key, at, published, subscriber, processed in rows:
        e = events.get(event_id)
        if e is None:
            e = events[event_id] = EventTimes(
                event_id, routing_key, datetime.fromisoformat(at), published
            )
        if subscriber is not None:
            e.processed[subscriber] = processed
    return list(events.values())


# ---------------------------------------------------------------- the run


def _environment(versions: dict[str, str], opts: Options) -> dict[str, Any]:
    try:
        loop = f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        loop = "asyncio"
    return {
        "started_at": opts.started_at.isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlalchemy": importlib.metadata.version("sqlalchemy"),
        "asyncpg": importlib.metadata.version("asyncpg"),
        "aio_pika": importlib.metadata.version("aio-pika"),
        "bench_event_loop": loop,
        "roles_event_loop": "asyncio (asyncio.run in `capstan relay` / `capstan subscriber`)",
        "backends": versions,
        "git": git_commit(),
        "params": {
            "rates": opts.rates,
            "duration_s": opts.duration,
            "writers": opts.writers,
            "update_share": UPDATE_SHARE,
            "warmup_documents": WARMUP_DOCUMENTS,
            "warmup_rate": WARMUP_RATE,
            "drain_timeout_s": opts.drain_timeout,
            "split_subscribers": opts.split_subscribers,
            "load_generator": "DocumentStore in the bench process (build_container)",
        },
        "sustained_criterion": {
            "min_achieved_share": MIN_ACHIEVED_SHARE,
            "drain_grace_s": DRAIN_GRACE_S,
            "trend_factor": TREND_FACTOR,
            "trend_slack_ms": TREND_SLACK_MS,
        },
    }


def _runner() -> asyncio.Runner:
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    with _runner() as runner:
        return runner.run(coro)


def measure(opts: Options) -> dict[str, Any]:
    """The whole benchmark; cleans up processes, broker names, keys and the scratch database."""
    from capstan.roles import SUBSCRIBERS
    from capstan.settings import Settings

    backends = resolve_backends()
    amqp_url, amqp_var = resolve_amqp()
    versions = asyncio.run(check_backends(backends))
    versions["rabbitmq"] = asyncio.run(_check_amqp(amqp_url, amqp_var))
    environment = _environment(versions, opts)

    scratch = f"capstan_bench_{secrets.token_hex(4)}"
    scratch_url = with_database(backends.database_url, scratch)
    namespace = f"bench_{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="capstan-bench-events-"))
    roles: list[Role] = []
    created_db = False
    tenant_id: str | None = None
    overrides = {
        "CAPSTAN_DATABASE_URL": scratch_url,
        "CAPSTAN_CACHE_URL": backends.cache_url,
        "CAPSTAN_BROKER_URL": amqp_url,
        "CAPSTAN_BROKER_NAMESPACE": namespace,
        "CAPSTAN_DATA_DIR": str(workdir / "data"),
        "CAPSTAN_LOG_LEVEL": ROLE_LOG_LEVEL,
    }
    env = {**os.environ, **overrides}
    env.pop("CAPSTAN_SEARCH_URL", None)
    # The settings the roles will read (same environment), e.g. which subscribers are enabled.
    saved = {k: os.environ.get(k) for k in (*overrides, "CAPSTAN_SEARCH_URL")}
    os.environ.update(overrides)
    os.environ.pop("CAPSTAN_SEARCH_URL", None)
    try:
        settings = Settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    names = broker_names(
        namespace,
        sorted(set(SUBSCRIBERS) | set(settings.subscribers)),
        list(settings.event_retry_delays_ms),
    )
    try:
        with sigterm_as_interrupt():
            err.print(f"scratch database [bold]{scratch}[/bold] on {redact(scratch_url)}")
            asyncio.run(admin(backends.database_url, f'CREATE DATABASE "{scratch}"'))
            created_db = True
            tenant_id, _key_id, _key = asyncio.run(seed_tenant(scratch_url))
            err.print(f"broker namespace [bold]{namespace}[/bold] on {redact(amqp_url)}")

            groups = [[n] for n in settings.subscribers] if opts.split_subscribers else [["all"]]
            for group in groups:
                label = "subscribers" if group == ["all"] else f"subscriber-{group[0]}"
                sub_env = {**env, "CAPSTAN_METRICS_PORT": str(free_port())}
                roles.append(Role(label, ["subscriber", *group], sub_env, workdir / f"{label}.log"))
            relay_env = {**env, "CAPSTAN_METRICS_PORT": str(free_port())}
            roles.append(Role("relay", ["relay"], relay_env, workdir / "relay.log"))
            environment["roles"] = {
                "processes": {
                    r.label: {"command": " ".join(r.command[3:]), "metrics_port": r.metrics_port}
                    for r in roles
                }
            }
            environment["roles"]["log_level"] = ROLE_LOG_LEVEL
            environment["roles"]["subscribers_enabled"] = list(settings.subscribers)
            environment["roles"]["subscriber_prefetch"] = settings.subscriber_prefetch
            environment["roles"]["outbox_batch_size"] = settings.outbox_batch_size
            environment["roles"]["outbox_poll_seconds"] = settings.outbox_poll_seconds
            steps = _run(_drive(opts, settings, tenant_id, roles, amqp_url, names, environment))
    finally:
        environment["role_logs"] = {r.label: r.log_summary() for r in roles}
        _cleanup(
            roles, backends, amqp_url, namespace, names, scratch if created_db else None, tenant_id
        )
        with contextlib.suppress(OSError):
            for child in sorted(workdir.rglob("*"), reverse=True):
                child.unlink() if child.is_file() else child.rmdir()
            workdir.rmdir()
    return summarize(environment, steps)


async def _drive(
    opts: Options,
    settings: Any,
    tenant_id: str,
    roles: list[Role],
    amqp_url: str,
    names: dict[str, list[str]],
    environment: dict[str, Any],
) -> list[dict[str, Any]]:
    from capstan.container import build_container
    from capstan.roles import build_subscriber, subscriber_names

    writer_settings = settings.model_copy(update={"broker_url": "memory://"})
    container = build_container(writer_settings)
    try:
        enabled = subscriber_names(container, ["all"])
        patterns = {n: tuple(build_subscriber(container, n).patterns) for n in enabled}
        environment["roles"]["subscriber_patterns"] = {n: list(p) for n, p in patterns.items()}
        for role in roles[:-1]:
            await role.wait_metrics()
        await _wait_consumers(amqp_url, [f"{settings.broker_namespace}.sub.{n}" for n in enabled])
        await roles[-1].wait_metrics()
        err.print(
            "roles: "
            + ", ".join(f"`capstan {' '.join(r.command[3:])}` (pid {r.proc.pid})" for r in roles)
            + f"; subscribers {', '.join(enabled)}; CAPSTAN_LOG_LEVEL={ROLE_LOG_LEVEL}"
        )
        steps: list[dict[str, Any]] = []
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:>6.0f}/{task.total:<6.0f}"),
            TimeElapsedColumn(),
            console=err,
            refresh_per_second=4,
        ) as progress:
            # Warmup: documents the steps will update; also warms every connection and cache.
            warm = await _step(
                container, tenant_id, roles, patterns, progress, opts,
                label="warmup", rate=WARMUP_RATE,
                duration_s=WARMUP_DOCUMENTS / WARMUP_RATE, update_share=0.0, update_ids=[],
            )  # fmt: skip
            update_ids = list(warm["_created_ids"])
            if not update_ids:
                raise BenchError(f"the warmup wrote no document: {warm['writes']}")
            _report(progress.console, warm)
            for rate in opts.rates:
                step = await _step(
                    container, tenant_id, roles, patterns, progress, opts,
                    label=f"{rate}/s", rate=rate, duration_s=opts.duration,
                    update_share=UPDATE_SHARE, update_ids=update_ids,
                )  # fmt: skip
                _report(progress.console, step)
                steps.append(step)
                for role in roles:
                    role.check_alive()
        environment["warmup"] = {k: v for k, v in warm.items() if not k.startswith("_")}
        for step in steps:
            step.pop("_created_ids", None)
        return steps
    finally:
        await container.close()


async def _step(
    container: Container,
    tenant_id: str,
    roles: list[Role],
    patterns: Mapping[str, tuple[str, ...]],
    progress: Progress,
    opts: Options,
    *,
    label: str,
    rate: int,
    duration_s: float,
    update_share: float,
    update_ids: list[str],
) -> dict[str, Any]:
    total = len(schedule(rate, duration_s))
    task = progress.add_task(f"{label}: writing", total=total)
    lo = await _max_outbox_id(container)
    before = await _scrape_all(roles)
    cpu_before = CpuSnapshot.take(roles)

    def tick() -> None:
        progress.advance(task)

    stats = await generate(
        container,
        tenant_id,
        rate=rate,
        duration_s=duration_s,
        writers=opts.writers,
        update_share=update_share,
        update_ids=update_ids,
        on_write=tick,
    )
    cpu_load = CpuSnapshot.take(roles)
    hi = await _max_outbox_id(container)

    # Drain: until every event is published and done by every subscriber bound to it.
    progress.update(task, description=f"{label}: draining", completed=0)
    drain_started = time.monotonic()
    drained = False
    while time.monotonic() - drain_started < opts.drain_timeout:
        events, published, expected, done = await _progress(container, lo, hi, patterns)
        progress.update(task, total=max(expected, 1), completed=done)
        if published == events and done >= expected:
            drained = True
            break
        for role in roles:
            role.check_alive()
        await asyncio.sleep(DRAIN_POLL_S)
    drain_s = time.monotonic() - drain_started
    progress.update(task, description=f"{label}: done", visible=False)
    after = await _scrape_all(roles)

    events_times = await _collect(container, lo, hi)
    achieved = stats.achieved_rate()
    analysis = analyze_step(
        events_times,
        patterns,
        offered_rate=rate,
        achieved_rate=achieved,
        write_errors=stats.errors,
    )
    if not drained:
        analysis["not_sustained_because"].append(
            f"backlog not drained within the {opts.drain_timeout}s drain timeout"
        )
        analysis["sustained"] = False
    return {
        "label": label,
        "offered_rate": rate,
        "achieved_rate": round(achieved, 1),
        "duration_s": duration_s,
        "writes": stats.to_dict(),
        **analysis,
        "drained": drained,
        "drain_wait_s": round(drain_s, 2),
        "cpu_cores_during_load": cpu_load.share_since(cpu_before),
        "metrics": metrics_view(before, after),
        "_created_ids": stats.created_ids,
    }


def _report(console: Console, step: dict[str, Any]) -> None:
    lat = step["latency"]
    p50 = "-" if lat["p50_ms"] is None else f"{lat['p50_ms']:.1f}"
    p99 = "-" if lat["p99_ms"] is None else f"{lat['p99_ms']:.1f}"
    verdict = "sustained" if step["sustained"] else "[yellow]not sustained[/yellow]"
    console.print(
        f"  {step['label']:>8}: {step['achieved_rate']:7.1f} writes/s, {step['events']} events, "
        f"p50 {p50} ms, p99 {p99} ms, drain {step['drain_wait_s']:.1f}s, {verdict}"
    )
    for reason in step["not_sustained_because"]:
        console.print(f"            [yellow]{reason}[/yellow]")


def _cleanup(
    roles: list[Role],
    b: Backends,
    amqp_url: str,
    namespace: str,
    names: dict[str, list[str]],
    scratch: str | None,
    tenant_id: str | None,
) -> None:
    for role in roles:
        try:
            role.stop()
        except Exception as exc:
            err.print(f"[red]could not stop {role.label} (pid {role.proc.pid}): {exc}[/red]")
    try:
        failed = asyncio.run(_delete_namespace(amqp_url, names))
        # Names the contract does not list yet (e.g. a new channel's exchange) go too.
        extra = _leftovers(amqp_url, namespace)
        if extra and (extra["queues"] or extra["exchanges"]):
            failed += asyncio.run(_delete_namespace(amqp_url, extra))
        left = _leftovers(amqp_url, namespace)
        remaining = failed if left is None else left["queues"] + left["exchanges"]
        if remaining:
            err.print(f"[yellow]broker names left in {namespace}: {remaining}[/yellow]")
        else:
            err.print(f"deleted broker namespace {namespace}")
    except Exception as exc:
        err.print(f"[red]could not delete broker namespace {namespace}: {exc}[/red]")
    if tenant_id is not None:
        try:
            asyncio.run(_forget_keys(b.cache_url, f"capstan:{tenant_id}:*"))
        except Exception as exc:
            err.print(f"[yellow]could not remove the bench's Redis keys: {exc}[/yellow]")
    if scratch is not None:
        try:
            asyncio.run(admin(b.database_url, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
            err.print(f"dropped scratch database {scratch}")
        except Exception as exc:
            err.print(f"[red]could not drop scratch database {scratch}: {exc}[/red]")


# ---------------------------------------------------------------- results


def summarize(environment: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    invalid: list[str] = []
    for s in steps:
        if s["writes"]["errors"]:
            invalid.append(f"{s['label']}: {s['writes']['errors']} writes failed")
        for sub, outcomes in s["metrics"]["consumed"].items():
            dead = outcomes.get("dead_lettered", 0)
            if dead:
                invalid.append(f"{s['label']}: {dead} events dead-lettered by {sub}")
    at_target = next((s for s in steps if s["offered_rate"] == TARGET_RATE), None)
    target: dict[str, Any] = {
        "rate": TARGET_RATE,
        "p99_ms_below": TARGET_P99_MS,
        "measured_p99_ms": None,
        "met": None,
    }
    if at_target is not None and at_target["latency"]["p99_ms"] is not None:
        target["measured_p99_ms"] = at_target["latency"]["p99_ms"]
        target["measured_p50_ms"] = at_target["latency"]["p50_ms"]
        target["met"] = bool(
            at_target["sustained"] and at_target["latency"]["p99_ms"] < TARGET_P99_MS
        )
    return {
        "benchmark": "events",
        "started_at": environment.pop("started_at"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "valid": not invalid,
        "invalid_reasons": invalid,
        "environment": environment,
        "target": target,
        "max_sustained_rate": max_sustained(steps),
        "steps": steps,
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _cores(cpu: Mapping[str, float], prefix: str) -> float:
    return sum(v for k, v in cpu.items() if k.startswith(prefix))


def render(result: dict[str, Any]) -> None:
    steps = result["steps"]
    table = Table(
        title="capstan bench events — commit → every subscriber done", title_justify="left"
    )
    for col in ("offered/s", "written/s", "events", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("sustained", no_wrap=True)
    for s in steps:
        lat = s["latency"]
        table.add_row(
            f"{s['offered_rate']:,}",
            f"{s['achieved_rate']:,.0f}",
            f"{s['events']:,}",
            _fmt(lat["p50_ms"]),
            _fmt(lat["p90_ms"]),
            _fmt(lat["p99_ms"]),
            _fmt(lat["max_ms"], ".0f"),
            "[green]yes[/green]" if s["sustained"] else "[yellow]no[/yellow]",
        )
    out.print(table)

    stage_names = list(steps[0]["stages"]) if steps else []
    stages = Table(title="where the time goes: ms after commit, p50 / p99", title_justify="left")
    stages.add_column("offered/s", justify="right")
    for name in stage_names:
        stages.add_column(name.replace("_", " "), justify="right", no_wrap=True)
    for s in steps:
        stages.add_row(
            f"{s['offered_rate']:,}",
            *(
                f"{_fmt(s['stages'][n]['p50_ms'], '.0f')} / {_fmt(s['stages'][n]['p99_ms'], '.0f')}"
                for n in stage_names
            ),
        )
    out.print(stages)

    cpu_table = Table(title="CPU cores used during the load", title_justify="left")
    columns = (
        ("writers", "bench_writers"),
        ("relay", "relay"),
        ("subscribers", "subscriber"),
        ("postgres", "postgres"),
        ("rabbitmq", "beam.smp"),
        ("redis", "redis-server"),
        ("other", "other"),
        ("machine", "machine"),
    )
    cpu_table.add_column("offered/s", justify="right")
    for label, _ in columns:
        cpu_table.add_column(label, justify="right")
    for s in steps:
        cpu = s["cpu_cores_during_load"]
        cpu_table.add_row(
            f"{s['offered_rate']:,}", *(f"{_cores(cpu, key):.2f}" for _, key in columns)
        )
    out.print(cpu_table)

    for s in steps:
        for reason in s["not_sustained_because"]:
            out.print(f"  {s['offered_rate']}/s not sustained: {reason}")
    t = result["target"]
    if t["met"] is None:
        mark = "[yellow]NOT MEASURED[/yellow] (no step at 500/s)"
    else:
        mark = "[green]PASS[/green]" if t["met"] else "[yellow]MISS[/yellow]"
    out.print(
        f"design target: p99 < {t['p99_ms_below']:g} ms at {t['rate']}/s, sustained — "
        f"measured p99 {_fmt(t['measured_p99_ms'])} ms: {mark} (informational)"
    )
    best = result["max_sustained_rate"]
    out.print(
        "maximum sustained rate: "
        + ("none of the steps" if best is None else f"{best:,.0f} events/s")
        + f" (of {', '.join(str(s['offered_rate']) for s in steps)})"
    )
    env = result["environment"]
    out.print(
        f"{env['cpu_count']} CPUs shared by the writers (this process), "
        + ", ".join(f"`capstan {v['command']}`" for v in env["roles"]["processes"].values())
        + ", PostgreSQL, RabbitMQ and Redis (and whatever else runs: `other`)."
    )
    if not result["valid"]:
        out.print("[red]INVALID measurement:[/red]")
        for reason in result["invalid_reasons"]:
            out.print(f"  [red]{reason}[/red]")


def default_output(now: datetime) -> Path:
    return Path("bench/results") / f"events-{now.strftime('%Y%m%dT%H%M%SZ')}.json"


def events(
    rates: Annotated[
        str, typer.Option(help="Offered write rates, events/s, comma-separated, in order.")
    ] = "500,1000,2000,4000",
    duration: Annotated[int, typer.Option(min=1, help="Seconds of load per rate.")] = 10,
    writers: Annotated[
        int, typer.Option(min=1, help="Concurrent writers (bounded pool of the open loop).")
    ] = 16,
    drain_timeout: Annotated[
        int, typer.Option(min=1, help="Seconds to wait for a step's backlog to drain.")
    ] = 120,
    split_subscribers: Annotated[
        bool,
        typer.Option(
            help="One `capstan subscriber NAME` process per subscriber instead of "
            "`capstan subscriber all` (to see what sharing one process costs)."
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(help="JSON result file (default bench/results/events-<UTC timestamp>.json)."),
    ] = None,
) -> None:
    """Commit → every subscriber done: p50/p99 per offered rate and the max sustained rate."""
    now = datetime.now(UTC)
    try:
        parsed = parse_rates(rates)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--rates") from exc
    opts = Options(parsed, duration, writers, drain_timeout, now, split_subscribers)
    try:
        result = measure(opts)
    except BenchError as exc:
        err.print(f"[red]bench events: {exc}[/red]")
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        err.print(
            "[yellow]interrupted; the roles, broker namespace and scratch database were "
            "cleaned up[/yellow]"
        )
        raise typer.Exit(130) from None
    path = output or default_output(now)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    render(result)
    out.print(f"results: {path}")
    from capstan.bench.plot import MissingMatplotlib, plot_events

    try:
        plot_events(result, path.with_suffix(".png"))
        out.print(f"chart: {path.with_suffix('.png')}")
    except MissingMatplotlib as exc:
        out.print(f"no chart: {exc}")
    if not result["valid"]:
        raise typer.Exit(1)
