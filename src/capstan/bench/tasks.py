"""`capstan bench tasks`: Capstan's task system against Celery and a raw RabbitMQ ceiling.

One run, against the PostgreSQL and RabbitMQ that `scripts/services up` runs:

1. a scratch database (migrated, one tenant) and a broker namespace of its own
   (`CAPSTAN_BROKER_NAMESPACE=bench_<random>`); every queue and exchange of the run (Capstan's,
   Celery's and the ceiling's) is named under it, so nothing meets anybody else's;
2. Capstan in its production topology, one process per role: `capstan relay`,
   `capstan worker --concurrency N` and `capstan subscriber all` (the task events feed the
   subscribers; `--no-subscribers` leaves them out), with `CAPSTAN_TASKS_ENABLE_TEST_HANDLERS`;
3. a Celery worker (`celery -A capstan.bench.celery_side worker --concurrency N`) on the same
   RabbitMQ, its results in the same scratch database (database result backend);
4. interleaved rounds of: Capstan throughput (N `test.noop` tasks submitted through
   `TaskService.submit`, the Python client the API calls, until all are `succeeded`), Celery
   throughput (N `.delay()` of the same no-op until N `SUCCESS` rows), the ceiling (raw aio-pika:
   N messages of Capstan's task-message size, published with confirms, consumed and acked), then
   idle submit -> running latency of both (one task at a time);
5. prints medians, the ratios Capstan/Celery and Capstan/ceiling, PASS/MISS against the design
   targets (informational), writes JSON + PNG under bench/results/;
6. stops every process, deletes the namespace's queues and exchanges and drops the scratch
   database, also on Ctrl-C, SIGTERM or an error.

See bench/README.md ("capstan bench tasks").
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from capstan.bench.common import (
    Backends,
    BenchError,
    _delete_keys,
    admin,
    check_backends,
    free_port,
    git_commit,
    redact,
    resolve_backends,
    seed_tenant,
    sigterm_as_interrupt,
    with_database,
)
from capstan.bench.common import run_async as _run
from capstan.bench.cpu import server_cpu as _server_cpu
from capstan.bench.cpu import system_cpu as _system_cpu
from capstan.bench.latency import expected_subscribers, summary_ms
from capstan.bench.outbox import max_outbox_id as _max_outbox_id
from capstan.bench.rabbitmq import check_amqp as _check_amqp
from capstan.bench.rabbitmq import delete_names as _delete_namespace
from capstan.bench.rabbitmq import leftovers as _leftovers
from capstan.bench.rabbitmq import resolve_amqp
from capstan.bench.rabbitmq import wait_consumers as _wait_consumers

if TYPE_CHECKING:
    from capstan.container import Container

out = Console()
err = Console(stderr=True)

# Design targets from the issue; informational: missing them does not fail the command.
TARGET_VS_CELERY = 2.0
TARGET_IDLE_P50_MS = 10.0

ROLE_LOG_LEVEL = "WARNING"
NOOP_TYPE = "test.noop"
POLL_S = 0.02  # completion polling while a throughput round runs (bounds its error)
LATENCY_POLL_S = 0.002
IDLE_GAP_S = 0.05  # between latency samples: the previous task and its events are done
WARMUP_TASKS = 50
DONE_TIMEOUT_S = 300.0
CELERY_SUBMIT_THREADS = 4
CLEANUP_RETRY_S = 90.0
CELERY_INSTALL = ".venv/bin/pip install celery psycopg2-binary"
SERVER_COMMS = {"postgres": "postgres", "rabbitmq": "beam.smp"}


@dataclass
class Options:
    tasks: int
    concurrency: int
    rounds: int
    latency_samples: int
    submitters: int
    subscribers: bool
    celery_pool: str
    celery_prefetch_multiplier: int
    started_at: datetime


# ---------------------------------------------------------------- pure helpers


def celery_backend_url(database_url: str) -> str:
    """Celery's database result backend URL for a postgresql:// URL (SQLAlchemy + psycopg2)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql+psycopg2")
    return "db+" + url.render_as_string(hide_password=False)


def missing_celery(find: Callable[[str], Any] = importlib.util.find_spec) -> list[str]:
    """The bench-only modules not installed (celery, psycopg2 for its result backend)."""
    return [m for m in ("celery", "psycopg2") if find(m) is None]


def rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def cpu_ms_per_task(cores: Mapping[str, float], wall_s: float, tasks: int) -> dict[str, float]:
    """CPU milliseconds per task of each process group (cores x wall / tasks), and their
    `total` (the machine-wide figure, which other sessions' work inflates, is left out)."""
    if tasks <= 0:
        return {}
    per = {k: round(v * wall_s / tasks * 1000, 2) for k, v in cores.items() if k != "machine"}
    per["total"] = round(sum(per.values()), 2)
    return per


def median_of(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


def verdict(measured: float | None, target: float, *, higher_is_better: bool) -> str:
    """PASS / MISS against a target, or NOT MEASURED."""
    if measured is None:
        return "NOT MEASURED"
    ok = measured >= target if higher_is_better else measured < target
    return "PASS" if ok else "MISS"


def summarize(environment: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, latency over all samples, ratios and target verdicts."""
    invalid: list[str] = []
    for r in rounds:
        for side in ("capstan", "celery"):
            if r[side]["failed"]:
                invalid.append(f"round {r['round']}: {r[side]['failed']} {side} tasks failed")
            if r[side]["submit_errors"]:
                invalid.append(
                    f"round {r['round']}: {r[side]['submit_errors']} {side} submits failed"
                )
    if environment.get("aborted"):
        invalid.append(f"run aborted {environment['aborted']}"[:500])
    median: dict[str, dict[str, Any]] = {
        side: {
            "tasks_per_s": median_of([r[side]["per_s"] for r in rounds]),
            "per_round": [r[side]["per_s"] for r in rounds],
        }
        for side in ("capstan", "celery", "ceiling")
    }
    if rounds and "drained_per_s" in rounds[0]["capstan"]:
        median["capstan"]["with_subscribers_drained_per_s"] = median_of(
            [r["capstan"].get("drained_per_s") for r in rounds]
        )
    for side, key in (
        ("capstan", "cpu_ms_per_task_until_drained"),
        ("capstan", "cpu_ms_per_task"),
        ("celery", "cpu_ms_per_task"),
        ("ceiling", "cpu_ms_per_task"),
    ):
        per = [r[side].get(key) for r in rounds if r[side].get(key)]
        if per and key not in median[side]:
            median[side][key] = {
                k: median_of([p.get(k) for p in per])
                for k in dict.fromkeys(x for p in per for x in p)
            }
    latency: dict[str, Any] = {}
    for side in ("capstan", "celery"):
        samples = [s for r in rounds for s in r[f"{side}_latency"]["samples_ms"]]
        latency[side] = summary_ms(samples)
        parts = [r[f"{side}_latency"].get("parts_ms", {}) for r in rounds]
        names = dict.fromkeys(k for p in parts for k in p)
        if names:
            latency[side]["parts"] = {
                n: summary_ms([v for p in parts for v in p.get(n, [])]) for n in names
            }
    capstan, celery, ceiling = (median[s]["tasks_per_s"] for s in ("capstan", "celery", "ceiling"))
    vs_celery = ratio(capstan, celery)
    p50 = latency["capstan"]["p50_ms"]
    return {
        "benchmark": "tasks",
        "started_at": environment.pop("started_at"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "valid": not invalid,
        "invalid_reasons": invalid,
        "environment": environment,
        "median": median,
        "latency": latency,
        "ratios": {"capstan_vs_celery": vs_celery, "capstan_vs_ceiling": ratio(capstan, ceiling)},
        "targets": {
            "vs_celery": {
                "at_least": TARGET_VS_CELERY,
                "measured": vs_celery,
                "verdict": verdict(vs_celery, TARGET_VS_CELERY, higher_is_better=True),
            },
            "idle_submit_to_running_p50_ms": {
                "below": TARGET_IDLE_P50_MS,
                "measured": p50,
                "verdict": verdict(
                    None if p50 is None else float(p50), TARGET_IDLE_P50_MS, higher_is_better=False
                ),
            },
        },
        "rounds": rounds,
    }


# ---------------------------------------------------------------- processes and their CPU


class Child:
    """A process of its own session (so its children, e.g. Celery's pool, are one group)."""

    def __init__(
        self, label: str, command: list[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.label = label
        self.command = command
        self.metrics_port = int(env.get("CAPSTAN_METRICS_PORT", "0"))
        self._log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def shown(self) -> str:
        args = self.command[3:] if self.command[1:3] == ["-m", "capstan.cli.main"] else None
        return "capstan " + " ".join(args) if args else " ".join(self.command[1:])

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_summary(self) -> dict[str, Any]:
        try:
            lines = self._log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        return {"lines": len(lines), "last": lines[-5:]}

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"`{self.shown}` exited with code {self.proc.returncode}:\n{self.log_tail()}"
            )

    async def wait_metrics(self, timeout_s: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    url = f"http://127.0.0.1:{self.metrics_port}/metrics"
                    if (await client.get(url)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise BenchError(f"{self.label}: /metrics did not answer within {timeout_s:g}s")

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL to the whole session after 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Anything of its session left behind (e.g. a pool child): gone too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def session_cpu(sessions: Mapping[int, str]) -> dict[str, float]:
    """CPU seconds so far of every process of the given sessions (by label), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(sessions.values(), 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        label = sessions.get(int(fields[3]))
        if label is not None:
            totals[label] += (int(fields[11]) + int(fields[12])) / tick
    return totals


@dataclass
class Cpu:
    at: float
    system: tuple[float, float]
    children: dict[str, float]
    servers: dict[tuple[str, int], float]
    bench: float

    @classmethod
    def take(cls, children: Sequence[Child]) -> Cpu:
        sessions = {c.proc.pid: c.label for c in children}
        return cls(
            time.monotonic(),
            _system_cpu(),
            session_cpu(sessions),
            _server_cpu(),
            time.process_time(),
        )

    def cores_since(self, before: Cpu) -> dict[str, float]:
        """Cores used per process group between two snapshots (1.0 = one core busy)."""
        wall = max(self.at - before.at, 1e-9)
        busy = self.system[0] - before.system[0]
        total = max(self.system[1] - before.system[1], 1e-9)
        shares = {"machine": round(busy / total * (os.cpu_count() or 1), 2)}
        shares["bench"] = round((self.bench - before.bench) / wall, 2)
        for label, value in self.children.items():
            shares[label] = round((value - before.children.get(label, value)) / wall, 2)
        for name, comm in SERVER_COMMS.items():
            used = sum(
                v - before.servers.get(k, 0.0) for k, v in self.servers.items() if k[0] == comm
            )
            shares[name] = round(used / wall, 2)
        return shares


# ---------------------------------------------------------------- the context of a run


@dataclass
class Run:
    opts: Options
    container: Container
    tenant_id: str
    amqp_url: str
    namespace: str
    children: list[Child]
    patterns: dict[str, tuple[str, ...]]
    celery_app: Any
    message_size: int
    progress: Progress

    def check_alive(self) -> None:
        for child in self.children:
            child.check_alive()

    async def scalar(self, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        async with self.container.engine.connect() as conn:
            return await conn.scalar(text(sql), params)

    async def execute(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        async with self.container.engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []


async def _wait_until(
    run: Run, done: Callable[[], Any], label: str, timeout_s: float = DONE_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await done():
        if time.monotonic() > deadline:
            raise BenchError(f"{label}: not done within {timeout_s:g}s")
        run.check_alive()
        await asyncio.sleep(POLL_S)


# ---------------------------------------------------------------- Capstan


async def _capstan_submit(run: Run, n: int, on_submit: Callable[[], None]) -> tuple[int, float]:
    """Submit n no-op tasks from `submitters` concurrent callers; (errors, seconds)."""
    from capstan.tasks.schemas import TaskSubmit

    errors = 0
    remaining = n
    started = time.time()

    async def submitter() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            try:
                await run.container.tasks.submit(run.tenant_id, TaskSubmit(type=NOOP_TYPE))
            except Exception as exc:
                errors += 1
                if errors <= 3:
                    err.print(f"[yellow]submit failed: {type(exc).__name__}: {exc}[/yellow]")
            on_submit()

    await asyncio.gather(*(submitter() for _ in range(min(run.opts.submitters, n))))
    return errors, time.time() - started


async def _capstan_counts(run: Run, since: datetime) -> tuple[int, int]:
    row = (
        await run.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), "
            "count(*) FILTER (WHERE status IN ('failed', 'cancelled')) "
            "FROM tasks WHERE tenant_id = :t AND created_at >= :since",
            t=run.tenant_id,
            since=since,
        )
    )[0]
    return int(row[0]), int(row[1])


async def _events_progress(run: Run, lo: int, hi: int) -> tuple[int, int, int, int]:
    """(outbox rows published, outbox rows, subscriber effects expected, recorded) of the
    outbox ids in (lo, hi]; task messages (channel `tasks`) go to workers, not subscribers."""
    rows = await run.execute(
        "SELECT channel, routing_key, count(*), count(published_at) FROM outbox "
        "WHERE id > :lo AND id <= :hi GROUP BY channel, routing_key",
        lo=lo,
        hi=hi,
    )
    done = await run.scalar(
        "SELECT count(*) FROM processed_events p JOIN outbox o ON o.event_id = p.event_id "
        "WHERE o.id > :lo AND o.id <= :hi AND o.channel = 'events' AND p.subscriber = ANY(:subs)",
        lo=lo,
        hi=hi,
        subs=list(run.patterns),
    )
    expected = sum(
        int(r[2]) * len(expected_subscribers(str(r[1]), run.patterns))
        for r in rows
        if r[0] == "events"
    )
    return sum(int(r[3]) for r in rows), sum(int(r[2]) for r in rows), expected, int(done or 0)


async def capstan_throughput(run: Run, n: int, label: str) -> dict[str, Any]:
    task = run.progress.add_task(f"{label}: capstan", total=n)
    lo = await _max_outbox_id(run.container)
    since = datetime.now(UTC) - timedelta(milliseconds=1)
    cpu0 = Cpu.take(run.children)
    t0 = time.time()
    submitting = asyncio.create_task(_capstan_submit(run, n, lambda: None))
    counts = (0, 0)

    async def finished() -> bool:
        nonlocal counts
        counts = await _capstan_counts(run, since)
        run.progress.update(task, completed=sum(counts))
        return submitting.done() and sum(counts) >= n - submitting.result()[0]

    await _wait_until(run, finished, f"{label}: capstan tasks")
    wall = time.time() - t0
    cpu1 = Cpu.take(run.children)
    submit_errors, submit_s = submitting.result()
    result: dict[str, Any] = {
        "tasks": n,
        "succeeded": counts[0],
        "failed": counts[1],
        "submit_errors": submit_errors,
        "submit_s": round(submit_s, 3),
        "wall_s": round(wall, 3),
        "per_s": rate(counts[0], wall),
        "cpu_cores": cpu1.cores_since(cpu0),
    }
    result["cpu_ms_per_task"] = cpu_ms_per_task(result["cpu_cores"], wall, n)
    if run.patterns:
        # The subscribers' share of the work: every task event of the round handled.
        hi = await _max_outbox_id(run.container)
        run.progress.update(task, description=f"{label}: capstan subscribers draining")

        async def drained() -> bool:
            published, events, expected, done = await _events_progress(run, lo, hi)
            run.progress.update(task, total=max(expected, 1), completed=done)
            return published == events and done >= expected

        await _wait_until(run, drained, f"{label}: capstan task events")
        drained_s = time.time() - t0
        result["drained_s"] = round(drained_s, 3)
        result["drained_per_s"] = rate(counts[0], drained_s)
        result["cpu_cores_until_drained"] = Cpu.take(run.children).cores_since(cpu0)
        result["cpu_ms_per_task_until_drained"] = cpu_ms_per_task(
            result["cpu_cores_until_drained"], drained_s, n
        )
    run.progress.update(task, visible=False)
    return result


async def capstan_latency(run: Run, samples: int, label: str) -> dict[str, Any]:
    """One task at a time on an idle system: submit -> running (`started_at`), split into the
    submit call (the commit of the task row and its outbox message) and commit -> running
    (NOTIFY -> relay -> RabbitMQ -> worker -> claim)."""
    from sqlalchemy import select

    from capstan.db.schema import Task
    from capstan.tasks.schemas import TaskSubmit

    task_bar = run.progress.add_task(f"{label}: capstan idle latency", total=samples)
    values: list[float] = []
    parts: dict[str, list[float]] = {"submit_call": [], "commit_to_running": []}
    for _ in range(samples):
        await asyncio.sleep(IDLE_GAP_S)
        t = time.time()
        task, _created = await run.container.tasks.submit(run.tenant_id, TaskSubmit(type=NOOP_TYPE))
        returned = time.time()
        deadline = time.monotonic() + 30
        while True:
            async with run.container.db() as session:
                started, finished = (
                    await session.execute(
                        select(Task.started_at, Task.finished_at).where(Task.id == task.id)
                    )
                ).one()
            if finished is not None and started is not None:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{label}: task {task.id} did not finish within 30 s")
            await asyncio.sleep(LATENCY_POLL_S)
        values.append((started.timestamp() - t) * 1000)
        parts["submit_call"].append((returned - t) * 1000)
        parts["commit_to_running"].append((started.timestamp() - returned) * 1000)
        run.progress.advance(task_bar)
    run.progress.update(task_bar, visible=False)
    return {"samples_ms": [round(v, 2) for v in values], "parts_ms": parts}


# ---------------------------------------------------------------- Celery


async def celery_throughput(run: Run, n: int, label: str) -> dict[str, Any]:
    from capstan.bench.celery_side import NOOP

    task = run.progress.add_task(f"{label}: celery", total=n)
    await run.execute("DELETE FROM celery_taskmeta")
    noop = run.celery_app.tasks[NOOP]
    errors = 0

    def submit(count: int) -> None:
        nonlocal errors
        for _ in range(count):
            try:
                noop.delay()
            except Exception as exc:
                errors += 1
                if errors <= 3:
                    err.print(f"[yellow]celery submit failed: {exc!r}[/yellow]")

    loop = asyncio.get_running_loop()
    shares = [
        n // CELERY_SUBMIT_THREADS + (i < n % CELERY_SUBMIT_THREADS)
        for i in range(CELERY_SUBMIT_THREADS)
    ]
    cpu0 = Cpu.take(run.children)
    t0 = time.time()
    with ThreadPoolExecutor(CELERY_SUBMIT_THREADS) as pool:
        submitting = asyncio.gather(*(loop.run_in_executor(pool, submit, s) for s in shares))
        submit_done: list[float] = []
        submitting.add_done_callback(lambda _f: submit_done.append(time.time()))
        counts = (0, 0)

        async def finished() -> bool:
            nonlocal counts
            row = (
                await run.execute(
                    "SELECT count(*) FILTER (WHERE status = 'SUCCESS'), "
                    "count(*) FILTER (WHERE status = 'FAILURE') FROM celery_taskmeta"
                )
            )[0]
            counts = (int(row[0]), int(row[1]))
            run.progress.update(task, completed=sum(counts))
            return submitting.done() and sum(counts) >= n - errors

        await _wait_until(run, finished, f"{label}: celery tasks")
        wall = time.time() - t0
        await submitting
    cpu1 = Cpu.take(run.children)
    run.progress.update(task, visible=False)
    return {
        "tasks": n,
        "succeeded": counts[0],
        "failed": counts[1],
        "submit_errors": errors,
        "submit_s": round(submit_done[0] - t0, 3) if submit_done else None,
        "wall_s": round(wall, 3),
        "per_s": rate(counts[0], wall),
        "cpu_cores": cpu1.cores_since(cpu0),
    }


async def celery_latency(run: Run, samples: int, label: str) -> dict[str, Any]:
    """One task at a time: `.delay()` -> the task body started (it returns time.time())."""
    from capstan.bench.celery_side import STARTED

    task_bar = run.progress.add_task(f"{label}: celery idle latency", total=samples)
    started_task = run.celery_app.tasks[STARTED]
    values: list[float] = []
    parts: dict[str, list[float]] = {"submit_call": []}
    for _ in range(samples):
        await asyncio.sleep(IDLE_GAP_S)
        t = time.time()
        handle = started_task.delay()
        parts["submit_call"].append((time.time() - t) * 1000)
        deadline = time.monotonic() + 30
        while True:
            rows = await run.execute(
                "SELECT result FROM celery_taskmeta WHERE task_id = :id AND status = 'SUCCESS'",
                id=handle.id,
            )
            if rows:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{label}: celery task {handle.id} did not finish within 30 s")
            await asyncio.sleep(LATENCY_POLL_S)
        started = float(json.loads(bytes(rows[0][0])))
        values.append((started - t) * 1000)
        run.progress.advance(task_bar)
    run.progress.update(task_bar, visible=False)
    return {"samples_ms": [round(v, 2) for v in values], "parts_ms": parts}


# ---------------------------------------------------------------- the ceiling


def task_message_body() -> bytes:
    """A Capstan task message body, as the relay publishes it (its size is the ceiling's)."""
    from capstan.events.envelope import encode
    from capstan.ids import uuid7

    return encode({"task_id": uuid7(), "priority": 0})


async def ceiling(run: Run, n: int, label: str) -> dict[str, Any]:
    """Raw aio-pika: publish n persistent messages with confirms (batches of 500 in flight, as
    the relay does), consume with prefetch = concurrency and ack each; first publish -> last ack."""
    import aio_pika

    task = run.progress.add_task(f"{label}: ceiling", total=n)
    queue_name = f"{run.namespace}.ceiling"
    body = b"x" * run.message_size
    pub_conn = await aio_pika.connect(run.amqp_url, timeout=5)
    con_conn = await aio_pika.connect(run.amqp_url, timeout=5)
    try:
        pub = await pub_conn.channel(publisher_confirms=True)
        con = await con_conn.channel()
        await con.set_qos(prefetch_count=run.opts.concurrency)
        queue = await con.declare_queue(queue_name, durable=True)
        await queue.purge()
        acked = 0
        all_acked = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal acked
            await message.ack()
            acked += 1
            if acked % 100 == 0:
                run.progress.update(task, completed=acked)
            if acked >= n:
                all_acked.set()

        tag = await queue.consume(on_message)
        cpu0 = Cpu.take(run.children)
        t0 = time.time()
        for start in range(0, n, 500):
            await asyncio.gather(
                *(
                    pub.default_exchange.publish(
                        aio_pika.Message(
                            body,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=secrets.token_hex(16),
                        ),
                        routing_key=queue_name,
                    )
                    for _ in range(start, min(start + 500, n))
                )
            )
        published = time.time()
        await asyncio.wait_for(all_acked.wait(), DONE_TIMEOUT_S)
        wall = time.time() - t0
        cpu1 = Cpu.take(run.children)
        await queue.cancel(tag)
    finally:
        await pub_conn.close()
        await con_conn.close()
    run.progress.update(task, visible=False)
    return {
        "tasks": n,
        "succeeded": n,
        "failed": 0,
        "submit_errors": 0,
        "submit_s": round(published - t0, 3),
        "wall_s": round(wall, 3),
        "per_s": rate(n, wall),
        "cpu_cores": cpu1.cores_since(cpu0),
    }


# ---------------------------------------------------------------- the run


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in ("celery", "kombu", "amqp", "psycopg2-binary", "sqlalchemy", "asyncpg", "aio-pika"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return found


def _environment(backends: dict[str, str], opts: Options, message_size: int) -> dict[str, Any]:
    return {
        "started_at": opts.started_at.isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": _versions(),
        "backends": backends,
        "git": git_commit(),
        "params": {
            "tasks": opts.tasks,
            "concurrency": opts.concurrency,
            "rounds": opts.rounds,
            "latency_samples_per_round": opts.latency_samples,
            "capstan_submitters": opts.submitters,
            "celery_submit_threads": CELERY_SUBMIT_THREADS,
            "message_size_bytes": message_size,
            "completion_poll_s": POLL_S,
            "idle_gap_s": IDLE_GAP_S,
        },
        "capstan": {
            "submit": "TaskService.submit in the bench process (build_container, uvloop)",
            "log_level": ROLE_LOG_LEVEL,
            "subscribers": opts.subscribers,
        },
        "celery": {
            "pool": opts.celery_pool,
            "concurrency": opts.concurrency,
            "prefetch_multiplier": opts.celery_prefetch_multiplier,
            "acks_late": True,
            "confirm_publish": True,
            "result_backend": "database (SQLAlchemy + psycopg2), same scratch database",
            "flags": "--without-gossip --without-mingle --without-heartbeat, no remote control",
        },
    }


def measure(opts: Options) -> dict[str, Any]:
    """The whole benchmark; cleans up processes, broker names and the scratch database."""
    from capstan.settings import Settings

    missing = missing_celery()
    if missing:
        raise BenchError(
            f"{' and '.join(missing)} not installed: the Celery side needs them in the bench "
            f"environment only (not a Capstan dependency): `{CELERY_INSTALL}`"
        )
    backends = resolve_backends()
    amqp_url, amqp_var = resolve_amqp()
    versions = asyncio.run(check_backends(backends))
    versions["rabbitmq"] = asyncio.run(_check_amqp(amqp_url, amqp_var))
    message_size = len(task_message_body())
    environment = _environment(versions, opts, message_size)

    scratch = f"capstan_bench_{secrets.token_hex(4)}"
    scratch_url = with_database(backends.database_url, scratch)
    namespace = f"bench_{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="capstan-bench-tasks-"))
    children: list[Child] = []
    created_db = False
    tenant_id: str | None = None
    overrides = {
        "CAPSTAN_DATABASE_URL": scratch_url,
        "CAPSTAN_CACHE_URL": backends.cache_url,
        "CAPSTAN_BROKER_URL": amqp_url,
        "CAPSTAN_BROKER_NAMESPACE": namespace,
        "CAPSTAN_DATA_DIR": str(workdir / "data"),
        "CAPSTAN_LOG_LEVEL": ROLE_LOG_LEVEL,
        "CAPSTAN_TASKS_ENABLE_TEST_HANDLERS": "true",
    }
    env = {**os.environ, **overrides}
    env.pop("CAPSTAN_SEARCH_URL", None)
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
    celery_queue = f"{namespace}.celery"
    celery_env = {
        **env,
        "CAPSTAN_BENCH_CELERY_BROKER": amqp_url,
        "CAPSTAN_BENCH_CELERY_BACKEND": celery_backend_url(scratch_url),
        "CAPSTAN_BENCH_CELERY_QUEUE": celery_queue,
        "CAPSTAN_BENCH_CELERY_PREFETCH_MULTIPLIER": str(opts.celery_prefetch_multiplier),
    }
    rounds: list[dict[str, Any]] = []
    try:
        with sigterm_as_interrupt():
            err.print(f"scratch database [bold]{scratch}[/bold] on {redact(scratch_url)}")
            asyncio.run(admin(backends.database_url, f'CREATE DATABASE "{scratch}"'))
            created_db = True
            tenant_id, _key_id, _key = asyncio.run(seed_tenant(scratch_url))
            err.print(f"broker namespace [bold]{namespace}[/bold] on {redact(amqp_url)}")
            from capstan.bench import celery_side

            celery_app = celery_side.make_app(
                amqp_url,
                celery_backend_url(scratch_url),
                celery_queue,
                opts.celery_prefetch_multiplier,
            )
            celery_side.create_tables(celery_app)

            def capstan_role(label: str, *args: str) -> Child:
                role_env = {**env, "CAPSTAN_METRICS_PORT": str(free_port())}
                command = [sys.executable, "-m", "capstan.cli.main", *args]
                return Child(label, command, role_env, workdir / f"{label}.log")

            run_subscribers = opts.subscribers and bool(settings.subscribers)
            if run_subscribers:
                children.append(capstan_role("capstan-subscribers", "subscriber", "all"))
            children.append(capstan_role("capstan-relay", "relay"))
            children.append(
                capstan_role("capstan-worker", "worker", "--concurrency", str(opts.concurrency))
            )
            celery_command = [
                sys.executable, "-m", "celery", "-A", "capstan.bench.celery_side", "worker",
                "--pool", opts.celery_pool, "--concurrency", str(opts.concurrency),
                "--queues", celery_queue, "--hostname", f"{namespace}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel", "WARNING",
            ]  # fmt: skip
            children.append(
                Child("celery-worker", celery_command, celery_env, workdir / "celery.log")
            )
            environment["processes"] = {c.label: c.shown for c in children}
            if not run_subscribers:
                environment["capstan"]["subscribers_note"] = (
                    "no subscriber process: --no-subscribers"
                    if not opts.subscribers
                    else "CAPSTAN_SUBSCRIBERS is empty: no subscriber enabled"
                )
            _run(
                _drive(
                    opts, settings, tenant_id, amqp_url, namespace, children, celery_app,
                    message_size, run_subscribers, environment, rounds,
                )
            )  # fmt: skip
    except Exception as exc:
        if not rounds:
            raise
        # A server restarted by someone else, say: keep the rounds measured so far.
        environment["aborted"] = f"after {len(rounds)} round(s): {type(exc).__name__}: {exc}"
        err.print(f"[red]aborted {environment['aborted']}[/red]")
    finally:
        environment["logs"] = {c.label: c.log_summary() for c in children}
        environment["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        _cleanup(
            children, backends, amqp_url, namespace, scratch if created_db else None, tenant_id
        )
        with contextlib.suppress(OSError):
            for child in sorted(workdir.rglob("*"), reverse=True):
                child.unlink() if child.is_file() else child.rmdir()
            workdir.rmdir()
    return summarize(environment, rounds)


async def _drive(
    opts: Options,
    settings: Any,
    tenant_id: str,
    amqp_url: str,
    namespace: str,
    children: list[Child],
    celery_app: Any,
    message_size: int,
    run_subscribers: bool,
    environment: dict[str, Any],
    rounds: list[dict[str, Any]],
) -> None:
    """Measure, appending each finished round to `rounds` (kept if a later one fails)."""
    from capstan.container import build_container
    from capstan.roles import build_subscriber, subscriber_names

    bench_settings = settings.model_copy(update={"broker_url": "memory://"})
    container = build_container(bench_settings)
    try:
        patterns: dict[str, tuple[str, ...]] = {}
        if run_subscribers:
            enabled = subscriber_names(container, ["all"])
            patterns = {n: tuple(build_subscriber(container, n).patterns) for n in enabled}
            await _wait_consumers(amqp_url, [f"{namespace}.sub.{n}" for n in enabled])
        environment["capstan"]["subscriber_patterns"] = {k: list(v) for k, v in patterns.items()}
        for child in children:
            if child.metrics_port:
                await child.wait_metrics()
        await _wait_consumers(amqp_url, [f"{namespace}.tasks.default", f"{namespace}.celery"])
        err.print(
            "processes: "
            + ", ".join(f"`{c.shown}` (pid {c.proc.pid})" for c in children)
            + f"; CAPSTAN_LOG_LEVEL={ROLE_LOG_LEVEL}"
        )
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:>6.0f}/{task.total:<6.0f}"),
            TimeElapsedColumn(),
            console=err,
            refresh_per_second=4,
        ) as progress:
            run = Run(
                opts, container, tenant_id, amqp_url, namespace, children, patterns,
                celery_app, message_size, progress,
            )  # fmt: skip
            # Warmup: connections, pools, prefork children, caches; not reported.
            await capstan_throughput(run, WARMUP_TASKS, "warmup")
            await celery_throughput(run, WARMUP_TASKS, "warmup")
            await ceiling(run, WARMUP_TASKS * 10, "warmup")
            for i in range(1, opts.rounds + 1):
                label = f"round {i}/{opts.rounds}"
                r: dict[str, Any] = {
                    "round": i,
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                }
                r["capstan"] = await capstan_throughput(run, opts.tasks, label)
                r["celery"] = await celery_throughput(run, opts.tasks, label)
                r["ceiling"] = await ceiling(run, opts.tasks, label)
                for side in ("celery", "ceiling"):
                    r[side]["cpu_ms_per_task"] = cpu_ms_per_task(
                        r[side]["cpu_cores"], r[side]["wall_s"], opts.tasks
                    )
                r["capstan_latency"] = await capstan_latency(run, opts.latency_samples, label)
                r["celery_latency"] = await celery_latency(run, opts.latency_samples, label)
                _report(progress.console, r)
                rounds.append(r)
    finally:
        await container.close()


def _report(console: Console, r: dict[str, Any]) -> None:
    cap, cel, top = r["capstan"], r["celery"], r["ceiling"]
    lat_c = summary_ms(r["capstan_latency"]["samples_ms"])
    lat_q = summary_ms(r["celery_latency"]["samples_ms"])
    drained = f" (subscribers drained: {cap['drained_per_s']}/s)" if "drained_per_s" in cap else ""
    console.print(
        f"  round {r['round']}: capstan {cap['per_s']} tasks/s{drained}, "
        f"celery {cel['per_s']} tasks/s, ceiling {top['per_s']} msg/s; idle submit→running "
        f"p50 capstan {lat_c['p50_ms']} ms, celery {lat_q['p50_ms']} ms; "
        f"load {r['load_average'][0]}"
    )


def _cleanup(
    children: list[Child],
    b: Backends,
    amqp_url: str,
    namespace: str,
    scratch: str | None,
    tenant_id: str | None,
) -> None:
    for child in children:
        try:
            child.stop()
        except Exception as exc:
            err.print(f"[red]could not stop {child.label} (pid {child.proc.pid}): {exc}[/red]")
    # A server restarted under the run (by another session, say) may still be coming back:
    # each clean-up step is retried for up to CLEANUP_RETRY_S.
    _retrying(lambda: _delete_broker_names(amqp_url, namespace), f"broker namespace {namespace}")
    if tenant_id is not None:
        with contextlib.suppress(Exception):
            asyncio.run(_delete_keys(b.cache_url, [f"capstan:{tenant_id}:*"]))
    if scratch is not None:
        drop = f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'
        if _retrying(lambda: asyncio.run(admin(b.database_url, drop)), f"database {scratch}"):
            err.print(f"dropped scratch database {scratch}")


def _retrying(step: Callable[[], None], what: str) -> bool:
    deadline = time.monotonic() + CLEANUP_RETRY_S
    while True:
        try:
            step()
            return True
        except Exception as exc:
            if time.monotonic() > deadline:
                err.print(f"[red]could not clean up {what}: {exc}[/red]")
                return False
            time.sleep(2)


def _delete_broker_names(amqp_url: str, namespace: str) -> None:
    """Every queue and exchange under the namespace (the bench's own), per the management
    API; raises while any is left, so `_retrying` tries again."""
    names = _leftovers(amqp_url, namespace)
    if names is None:
        names = {
            "queues": [f"{namespace}.celery", f"{namespace}.ceiling"],
            "exchanges": [f"{namespace}.celery"],
        }
    failed = asyncio.run(_delete_namespace(amqp_url, names))
    left = _leftovers(amqp_url, namespace)
    remaining = failed if left is None else left["queues"] + left["exchanges"]
    if remaining:
        raise BenchError(f"names left: {remaining}")
    err.print(f"deleted broker namespace {namespace}")


# ---------------------------------------------------------------- output


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _mean_cores(rounds: list[dict[str, Any]], side: str, key: str) -> float:
    values = [r[side]["cpu_cores"].get(key, 0.0) for r in rounds]
    return sum(values) / len(values) if values else 0.0


def render(result: dict[str, Any]) -> None:
    med, lat, rounds = result["median"], result["latency"], result["rounds"]
    env = result["environment"]
    table = Table(
        title=f"capstan bench tasks — {env['params']['tasks']:,} no-op tasks, concurrency "
        f"{env['params']['concurrency']}, median of {len(rounds)} rounds",
        title_justify="left",
    )
    for col in ("system", "tasks/s", "per round", "idle submit→running p50 / p99 ms"):
        table.add_column(col, justify="right" if col != "system" else "left", no_wrap=True)

    def per_round(side: str) -> str:
        return ", ".join(_fmt(v) for v in med[side]["per_round"])

    def latency(side: str) -> str:
        return f"{_fmt(lat[side]['p50_ms'], '.1f')} / {_fmt(lat[side]['p99_ms'], '.1f')}"

    table.add_row(
        "Capstan", _fmt(med["capstan"]["tasks_per_s"]), per_round("capstan"), latency("capstan")
    )
    if "with_subscribers_drained_per_s" in med["capstan"]:
        table.add_row(
            "  … until subscribers drained",
            _fmt(med["capstan"]["with_subscribers_drained_per_s"]),
            ", ".join(_fmt(r["capstan"].get("drained_per_s")) for r in rounds),
            "",
        )
    table.add_row(
        f"Celery ({env['celery']['pool']})", _fmt(med["celery"]["tasks_per_s"]),
        per_round("celery"), latency("celery"),
    )  # fmt: skip
    table.add_row(
        "ceiling (aio-pika)", _fmt(med["ceiling"]["tasks_per_s"]), per_round("ceiling"), ""
    )
    out.print(table)

    parts = lat["capstan"].get("parts", {})
    if parts:
        out.print(
            "Capstan idle latency parts, p50 / p99 ms: "
            + "; ".join(
                f"{name.replace('_', ' ')} {_fmt(p['p50_ms'], '.1f')} / {_fmt(p['p99_ms'], '.1f')}"
                for name, p in parts.items()
            )
        )

    cpu = Table(
        title="CPU ms per task during the throughput runs (median of rounds; robust to other "
        "load, unlike tasks/s) and cores busy on the machine",
        title_justify="left",
    )
    labels = [
        ("bench", "bench"),
        ("capstan worker", "capstan-worker"),
        ("relay", "capstan-relay"),
        ("subscribers", "capstan-subscribers"),
        ("celery worker", "celery-worker"),
        ("postgres", "postgres"),
        ("rabbitmq", "rabbitmq"),
        ("total", "total"),
    ]
    cpu.add_column("run")
    for name, _ in labels:
        cpu.add_column(name, justify="right")
    cpu.add_column("machine cores", justify="right")
    rows = [
        ("capstan (tasks done)", "capstan", "cpu_ms_per_task"),
        ("capstan (events drained)", "capstan", "cpu_ms_per_task_until_drained"),
        ("celery", "celery", "cpu_ms_per_task"),
        ("ceiling", "ceiling", "cpu_ms_per_task"),
    ]
    for title, side, key in rows:
        per = med[side].get(key)
        if per:
            cpu.add_row(
                title,
                *(_fmt(per.get(k), ".2f") for _, k in labels),
                f"{_mean_cores(rounds, side, 'machine'):.2f}",
            )
    out.print(cpu)

    ratios, targets = result["ratios"], result["targets"]
    out.print(
        f"Capstan/Celery = {_fmt(ratios['capstan_vs_celery'], '.2f')}x, "
        f"Capstan/ceiling = {_fmt(ratios['capstan_vs_ceiling'], '.3f')}x"
    )
    for name, t in targets.items():
        mark = {"PASS": "[green]PASS[/green]", "MISS": "[yellow]MISS[/yellow]"}.get(
            t["verdict"], "[yellow]NOT MEASURED[/yellow]"
        )
        goal = (
            f"Capstan ≥ {t['at_least']:g}x Celery"
            if name == "vs_celery"
            else f"idle submit→running p50 < {t['below']:g} ms"
        )
        out.print(
            f"design target: {goal} — measured {_fmt(t['measured'], '.2f')}: {mark} (informational)"
        )
    out.print(
        f"{env['cpu_count']} CPUs shared by everything (bench, roles, Celery, servers); "
        f"load average {env['load_average_at_start'][0]} at start, "
        f"{env.get('load_average_at_end', ['?'])[0]} at end."
    )
    note = env["capstan"].get("subscribers_note")
    if note:
        out.print(f"[yellow]{note}[/yellow]")
    if not result["valid"]:
        out.print("[red]INVALID measurement:[/red]")
        for reason in result["invalid_reasons"]:
            out.print(f"  [red]{reason}[/red]")


def plot_tasks(result: dict[str, Any], path: Path) -> None:
    """Two panels: median tasks/s of the three (log scale), and idle p50/p99 latency."""
    from capstan.bench.plot import MissingMatplotlib

    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise MissingMatplotlib(
            "the chart needs matplotlib: `.venv/bin/pip install matplotlib`"
        ) from exc
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    med, lat, env = result["median"], result["latency"], result["environment"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    names = ["Capstan", "Celery", "ceiling\n(aio-pika)"]
    values = [med[s]["tasks_per_s"] or 0 for s in ("capstan", "celery", "ceiling")]
    bars = left.bar(names, values, color=["#2f7ed8", "#3a9a4a", "#8c8c8c"])
    left.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
    left.set_yscale("log")
    left.set_ylim(max(min(v for v in values if v) / 3, 1), max(values) * 3)
    left.set_title("no-op tasks/s, submit → result committed (log)", fontsize=10)

    x = [0, 1]
    width = 0.38
    p50 = [lat[s]["p50_ms"] or 0 for s in ("capstan", "celery")]
    p99 = [lat[s]["p99_ms"] or 0 for s in ("capstan", "celery")]
    b50 = right.bar([i - width / 2 for i in x], p50, width, label="p50", color="#4a4a4a")
    b99 = right.bar([i + width / 2 for i in x], p99, width, label="p99", color="#c0c0c0")
    right.bar_label(b50, labels=[f"{v:.1f}" for v in p50], fontsize=8)
    right.bar_label(b99, labels=[f"{v:.1f}" for v in p99], fontsize=8)
    right.axhline(TARGET_IDLE_P50_MS, color="#d9822b", linestyle="--", linewidth=1)
    right.text(-0.4, TARGET_IDLE_P50_MS * 1.05, "target p50 < 10 ms", fontsize=7, color="#d9822b")
    right.set_xticks(x, ["Capstan", "Celery"])
    right.set_title("idle submit → running, ms", fontsize=10)
    right.legend(fontsize=8)
    ratios = result["ratios"]
    fig.suptitle(
        f"capstan bench tasks — concurrency {env['params']['concurrency']}, "
        f"{env['params']['tasks']:,} tasks x {env['params']['rounds']} rounds, "
        f"Capstan/Celery {_fmt(ratios['capstan_vs_celery'], '.2f')}x, "
        f"{env['cpu_count']} CPUs, {(env['git']['commit'] or 'unknown')[:8]}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def default_output(now: datetime) -> Path:
    return Path("bench/results") / f"tasks-{now.strftime('%Y%m%dT%H%M%SZ')}.json"


def tasks(
    tasks: Annotated[int, typer.Option(min=1, help="No-op tasks per throughput run.")] = 2000,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Worker concurrency, Capstan and Celery alike.")
    ] = 8,
    rounds: Annotated[
        int, typer.Option(min=1, help="Interleaved rounds (Capstan, Celery, ceiling); medians.")
    ] = 2,
    latency_samples: Annotated[
        int, typer.Option(min=1, help="Sequential idle-latency tasks per system per round.")
    ] = 100,
    submitters: Annotated[
        int, typer.Option(min=1, help="Concurrent Capstan submit calls in the bench process.")
    ] = 16,
    subscribers: Annotated[
        bool,
        typer.Option(help="Run `capstan subscriber all` (the deployed cost of task events)."),
    ] = True,
    celery_pool: Annotated[
        str, typer.Option(help="Celery worker pool: prefork or threads.")
    ] = "prefork",
    celery_prefetch_multiplier: Annotated[
        int, typer.Option(min=1, help="Celery worker_prefetch_multiplier (1: as Capstan).")
    ] = 1,
    output: Annotated[
        Path | None,
        typer.Option(help="JSON result file (default bench/results/tasks-<UTC timestamp>.json)."),
    ] = None,
) -> None:
    """No-op task throughput and idle latency: Capstan vs Celery vs raw RabbitMQ."""
    if celery_pool not in ("prefork", "threads", "solo"):
        raise typer.BadParameter("prefork, threads or solo", param_hint="--celery-pool")
    now = datetime.now(UTC)
    opts = Options(
        tasks, concurrency, rounds, latency_samples, submitters, subscribers,
        celery_pool, celery_prefetch_multiplier, now,
    )  # fmt: skip
    try:
        result = measure(opts)
    except BenchError as exc:
        err.print(f"[red]bench tasks: {exc}[/red]")
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        err.print(
            "[yellow]interrupted; the processes, broker namespace and scratch database were "
            "cleaned up[/yellow]"
        )
        raise typer.Exit(130) from None
    except Exception as exc:  # e.g. a server restarted under the run by someone else
        err.print(
            f"[red]bench tasks: the run failed: {type(exc).__name__}: {exc}[/red]\n"
            "(cleaned up; if a server was restarted meanwhile, run it again)"
        )
        raise typer.Exit(2) from exc
    path = output or default_output(now)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    render(result)
    out.print(f"results: {path}")
    from capstan.bench.plot import MissingMatplotlib

    try:
        plot_tasks(result, path.with_suffix(".png"))
        out.print(f"chart: {path.with_suffix('.png')}")
    except MissingMatplotlib as exc:
        out.print(f"no chart: {exc}")
    if not result["valid"]:
        raise typer.Exit(1)
