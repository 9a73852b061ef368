"""`capstan bench tasks`: Capstan's task system against Celery and a raw RabbitMQ ceiling.

One run, against the PostgreSQL and RabbitMQ that `scripts/services up` runs:

1. a scratch database (migrated, one tenant) and a broker namespace of its own
   (`CAPSTAN_BROKER_NAMESPACE=bench_<random>`); every queue and exchange of the run (Capstan's,
   Celery's and the ceiling's) is named under it, so nothing meets anybody else's;
2. Capstan in its production topology, one process per role: `capstan relay`,
   `capstan worker --concurrency N` and `capstan subscriber all` (the task events feed the
   subscribers; `--no-subscribers` leaves them out), with `CAPSTAN_TASKS_ENABLE_TEST_HANDLERS`;
3. a Celery worker (`celery -A capstan_bench.celery_side worker --concurrency N`) on the same
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

This module runs steps 1-3 and 6 and the rounds; each side is measured in its own module
(`capstan_side`, `celery_side`, `ceiling`, in the context of `tasks_run.Run`), and
`tasks_report` summarizes and prints the result. See bench/README.md ("capstan bench tasks").
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import secrets
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from capstan_bench.capstan_side import capstan_latency, capstan_throughput
from capstan_bench.ceiling import ceiling, task_message_body
from capstan_bench.common import (
    ROLE_LOG_LEVEL,
    BenchError,
    ScratchDatabase,
    child_env,
    err,
    forget_keys,
    git_commit,
    redact,
    remove_tree,
    role_overrides,
    run_async,
    settings_for,
    sigterm_as_interrupt,
)
from capstan_bench.processes import ChildProcess, start_role, stop_all
from capstan_bench.rabbitmq import check_servers, remove_namespace, wait_consumers
from capstan_bench.report import (
    default_output,
    load_average,
    machine_environment,
    measured,
    progress_bar,
    publish,
)
from capstan_bench.tasks_report import cpu_ms_per_task, print_round, render, summarize
from capstan_bench.tasks_run import CELERY_SUBMIT_THREADS, IDLE_GAP_S, POLL_S, Options, Run

WARMUP_TASKS = 50
# A server restarted under the run (by another session, say) may still be coming back: each
# clean-up step is tried again for up to this long.
CLEANUP_RETRY_S = 90.0
CELERY_INSTALL = ".venv/bin/pip install celery psycopg2-binary"


def celery_backend_url(database_url: str) -> str:
    """Celery's database result backend URL for a postgresql:// URL (SQLAlchemy + psycopg2)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql+psycopg2")
    return "db+" + url.render_as_string(hide_password=False)


def missing_celery(find: Callable[[str], Any] = importlib.util.find_spec) -> list[str]:
    """The bench-only modules not installed (celery, psycopg2 for its result backend)."""
    return [m for m in ("celery", "psycopg2") if find(m) is None]


# ---------------------------------------------------------------- the run


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in ("celery", "kombu", "amqp", "psycopg2-binary", "sqlalchemy", "asyncpg", "aio-pika"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return found


def _environment(backends: dict[str, str], opts: Options, message_size: int) -> dict[str, Any]:
    return {
        **machine_environment(opts.started_at),
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
    missing = missing_celery()
    if missing:
        raise BenchError(
            f"{' and '.join(missing)} not installed: the Celery side needs them in the bench "
            f"environment only (not a Capstan dependency): `{CELERY_INSTALL}`"
        )
    backends, amqp_url, versions = check_servers()
    message_size = len(task_message_body())
    environment = _environment(versions, opts, message_size)

    scratch = ScratchDatabase(backends.database_url)
    namespace = f"bench_{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="capstan-bench-tasks-"))
    children: list[ChildProcess] = []
    tenant_id: str | None = None
    overrides = role_overrides(
        scratch.url,
        backends.cache_url,
        amqp_url,
        namespace,
        workdir,
        CAPSTAN_TASKS_ENABLE_TEST_HANDLERS="true",
    )
    env = child_env(overrides)
    settings = settings_for(overrides)
    celery_queue = f"{namespace}.celery"
    celery_env = {
        **env,
        "CAPSTAN_BENCH_CELERY_BROKER": amqp_url,
        "CAPSTAN_BENCH_CELERY_BACKEND": celery_backend_url(scratch.url),
        "CAPSTAN_BENCH_CELERY_QUEUE": celery_queue,
        "CAPSTAN_BENCH_CELERY_PREFETCH_MULTIPLIER": str(opts.celery_prefetch_multiplier),
    }
    rounds: list[dict[str, Any]] = []
    try:
        with sigterm_as_interrupt():
            tenant_id, _key_id, _key = scratch.create()
            err.print(f"broker namespace [bold]{namespace}[/bold] on {redact(amqp_url)}")
            from capstan_bench import celery_side

            celery_app = celery_side.make_app(
                amqp_url,
                celery_backend_url(scratch.url),
                celery_queue,
                opts.celery_prefetch_multiplier,
            )
            celery_side.create_tables(celery_app)

            run_subscribers = opts.subscribers and bool(settings.subscribers)
            if run_subscribers:
                subscriber = ["subscriber", "all"]
                children.append(start_role("capstan-subscribers", subscriber, env, workdir))
            children.append(start_role("capstan-relay", ["relay"], env, workdir))
            worker = ["worker", "--concurrency", str(opts.concurrency)]
            children.append(start_role("capstan-worker", worker, env, workdir))
            celery_command = [
                sys.executable, "-m", "celery", "-A", "capstan_bench.celery_side", "worker",
                "--pool", opts.celery_pool, "--concurrency", str(opts.concurrency),
                "--queues", celery_queue, "--hostname", f"{namespace}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel", "WARNING",
            ]  # fmt: skip
            children.append(
                ChildProcess("celery-worker", celery_command, celery_env, workdir / "celery.log")
            )
            environment["processes"] = {c.label: c.shown for c in children}
            if not run_subscribers:
                environment["capstan"]["subscribers_note"] = (
                    "no subscriber process: --no-subscribers"
                    if not opts.subscribers
                    else "CAPSTAN_SUBSCRIBERS is empty: no subscriber enabled"
                )
            run_async(
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
        environment["load_average_at_end"] = load_average()
        stop_all(children)
        # The names the run declares (the management API finds any other under the namespace).
        known = {
            "queues": [f"{namespace}.celery", f"{namespace}.ceiling"],
            "exchanges": [f"{namespace}.celery"],
        }
        remove_namespace(amqp_url, namespace, known, retry_s=CLEANUP_RETRY_S)
        if tenant_id is not None:
            forget_keys(backends.cache_url, [f"capstan:{tenant_id}:*"])
        scratch.drop(retry_s=CLEANUP_RETRY_S)
        remove_tree(workdir)
    return summarize(environment, rounds)


async def _drive(
    opts: Options,
    settings: Any,
    tenant_id: str,
    amqp_url: str,
    namespace: str,
    children: list[ChildProcess],
    celery_app: Any,
    message_size: int,
    run_subscribers: bool,
    environment: dict[str, Any],
    rounds: list[dict[str, Any]],
) -> None:
    """Measure, appending each finished round to `rounds` (kept if a later one fails)."""
    from capstan.composition import build_subscriber, subscriber_names
    from capstan.container import build_container
    from capstan_bench.celery_side import celery_latency, celery_throughput

    # The real broker, as the API has it: submit commits the task and publishes its message
    # straight to RabbitMQ (direct dispatch); an in-memory broker would send every task
    # through the outbox and the relay instead, which is not the path the API takes.
    container = build_container(settings)
    try:
        patterns: dict[str, tuple[str, ...]] = {}
        if run_subscribers:
            enabled = subscriber_names(container, ["all"])
            patterns = {n: tuple(build_subscriber(container, n).patterns) for n in enabled}
            await wait_consumers(amqp_url, [f"{namespace}.sub.{n}" for n in enabled])
        environment["capstan"]["subscriber_patterns"] = {k: list(v) for k, v in patterns.items()}
        for child in children:
            if child.metrics_port:
                await child.wait_metrics()
        await wait_consumers(amqp_url, [f"{namespace}.tasks.default", f"{namespace}.celery"])
        err.print(
            "processes: "
            + ", ".join(f"`{c.shown}` (pid {c.proc.pid})" for c in children)
            + f"; CAPSTAN_LOG_LEVEL={ROLE_LOG_LEVEL}"
        )
        with progress_bar() as progress:
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
                    "load_average": load_average(),
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
                print_round(progress.console, r)
                rounds.append(r)
    finally:
        await container.close()


# ---------------------------------------------------------------- the command


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
    result = measured(
        "tasks",
        lambda: measure(opts),
        cleaned_up="the processes, broker namespace and scratch database were cleaned up",
        any_error=True,  # e.g. a server restarted under the run by someone else
    )
    from capstan_bench.plot import plot_tasks

    publish(result, output or default_output("tasks", now), render, plot_tasks)
