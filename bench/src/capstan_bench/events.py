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
4. per step: wait until every event is published and counted as handled by every subscriber
   bound to it (their capstan_events_consumed_total), then read per event the envelope `time`
   (commit), `outbox.published_at` (relay) and `audit_log.recorded_at` (the ordered audit
   subscriber); the other subscribers' latency is their end-to-end histogram (share of events
   within 100 ms), since their PostgreSQL fast paths keep no per-event row;
5. prints p50/p99 per rate, the sustained verdict per step and PASS/MISS against the design
   target (p99 < 100 ms at 500 events/s), writes JSON under bench/results/;
6. stops the processes, deletes the namespace's exchanges and queues, the bench's Redis keys
   and the scratch database, also on Ctrl-C, SIGTERM or an error.

See bench/README.md ("capstan bench events").
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from capstan.db.unit import unit_of_work
from capstan_bench.common import (
    ROLE_LOG_LEVEL,
    BenchError,
    ScratchDatabase,
    child_env,
    err,
    forget_keys,
    git_commit,
    out,
    redact,
    remove_tree,
    role_overrides,
    run_async,
    settings_for,
    sigterm_as_interrupt,
)
from capstan_bench.cpu import SERVER_COMMS, CpuSnapshot
from capstan_bench.latency import (
    DRAIN_GRACE_S,
    MIN_ACHIEVED_SHARE,
    TREND_FACTOR,
    TREND_SLACK_MS,
    analyze_step,
    max_sustained,
    parse_rates,
    schedule,
    summary_ms,
    write_kind,
)
from capstan_bench.outbox import event_times, handled, max_outbox_id, outbox_progress
from capstan_bench.processes import ChildProcess, Samples, scrape_all, start_role, stop_all
from capstan_bench.rabbitmq import check_servers, remove_namespace, wait_consumers
from capstan_bench.report import (
    default_output,
    event_loop,
    fmt,
    machine_environment,
    measured,
    print_invalid,
    progress_bar,
    publish,
    result_header,
)

if TYPE_CHECKING:
    from capstan.container import Container

# Design target from the issue; informational: missing it does not fail the command.
TARGET_RATE = 500
TARGET_P99_MS = 100.0

UPDATE_SHARE = 0.5  # half the writes update an existing document, half create one
WARMUP_DOCUMENTS = 1000  # created before the first step: warmup, and the documents updated
WARMUP_RATE = 200
DRAIN_POLL_S = 0.25
# The metric families of the roles that the result reports (`metrics_view`).
METRIC_FAMILIES = (
    "capstan_event_end_to_end_seconds",
    "capstan_events_consumed",
    "capstan_relay_batch_size",
    "capstan_subscriber_handle_duration_seconds",
    "capstan_relay_publish_failures",
)

BODY = ("An event benchmark document: one row and its outbox event per write. " * 4).strip()


@dataclass
class Options:
    rates: list[int]
    duration: int
    writers: int
    drain_timeout: int
    started_at: datetime
    split_subscribers: bool = False


# ---------------------------------------------------------------- broker names


def broker_names(
    namespace: str, subscribers: list[str], retry_ms: list[int]
) -> dict[str, list[str]]:
    """Every exchange and queue a namespace can have (docs/contracts/events.md)."""
    queues: list[str] = []
    for name in subscribers:
        base = f"{namespace}.sub.{name}"
        queues += [base, f"{base}.dead", *(f"{base}.retry.{ms}" for ms in retry_ms)]
    return {"exchanges": [f"{namespace}.events", f"{namespace}.realtime"], "queues": queues}


# ---------------------------------------------------------------- metrics of the roles


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
                    async with unit_of_work(container.db) as uow:
                        patch = DocumentUpdate(title=f"bench update {i}", body=BODY)
                        await store.update(uow, tenant_id, doc_id, patch)
                else:
                    doc = await store.create_one(
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


# ---------------------------------------------------------------- the run


def _environment(versions: dict[str, str], opts: Options) -> dict[str, Any]:
    return {
        **machine_environment(opts.started_at),
        "sqlalchemy": importlib.metadata.version("sqlalchemy"),
        "asyncpg": importlib.metadata.version("asyncpg"),
        "aio_pika": importlib.metadata.version("aio-pika"),
        "bench_event_loop": event_loop(),
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


def measure(opts: Options) -> dict[str, Any]:
    """The whole benchmark; cleans up processes, broker names, keys and the scratch database."""
    from capstan.composition import SUBSCRIBERS

    backends, amqp_url, versions = check_servers()
    environment = _environment(versions, opts)

    scratch = ScratchDatabase(backends.database_url)
    namespace = f"bench_{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="capstan-bench-events-"))
    roles: list[ChildProcess] = []
    tenant_id: str | None = None
    overrides = role_overrides(scratch.url, backends.cache_url, amqp_url, namespace, workdir)
    env = child_env(overrides)
    settings = settings_for(overrides)
    names = broker_names(
        namespace,
        sorted(set(SUBSCRIBERS) | set(settings.subscribers)),
        list(settings.event_retry_delays_ms),
    )
    try:
        with sigterm_as_interrupt():
            tenant_id, _key_id, _key = scratch.create()
            err.print(f"broker namespace [bold]{namespace}[/bold] on {redact(amqp_url)}")

            groups = [[n] for n in settings.subscribers] if opts.split_subscribers else [["all"]]
            for group in groups:
                label = "subscribers" if group == ["all"] else f"subscriber-{group[0]}"
                roles.append(start_role(label, ["subscriber", *group], env, workdir))
            roles.append(start_role("relay", ["relay"], env, workdir))
            environment["roles"] = {
                "processes": {
                    r.label: {
                        "command": r.shown.removeprefix("capstan "),
                        "metrics_port": r.metrics_port,
                    }
                    for r in roles
                }
            }
            environment["roles"]["log_level"] = ROLE_LOG_LEVEL
            environment["roles"]["subscribers_enabled"] = list(settings.subscribers)
            environment["roles"]["subscriber_prefetch"] = settings.subscriber_prefetch
            environment["roles"]["outbox_batch_size"] = settings.outbox_batch_size
            environment["roles"]["outbox_poll_seconds"] = settings.outbox_poll_seconds
            steps = run_async(_drive(opts, settings, tenant_id, roles, amqp_url, environment))
    finally:
        environment["role_logs"] = {r.label: r.log_summary() for r in roles}
        stop_all(roles)
        remove_namespace(amqp_url, namespace, names)
        if tenant_id is not None:
            forget_keys(backends.cache_url, [f"capstan:{tenant_id}:*"])
        scratch.drop()
        remove_tree(workdir)
    return summarize(environment, steps)


async def _drive(
    opts: Options,
    settings: Any,
    tenant_id: str,
    roles: list[ChildProcess],
    amqp_url: str,
    environment: dict[str, Any],
) -> list[dict[str, Any]]:
    from capstan.composition import build_subscriber, subscriber_names
    from capstan.container import build_container

    writer_settings = settings.model_copy(update={"broker_url": "memory://"})
    container = build_container(writer_settings)
    try:
        enabled = subscriber_names(container, ["all"])
        patterns = {n: tuple(build_subscriber(container, n).patterns) for n in enabled}
        environment["roles"]["subscriber_patterns"] = {n: list(p) for n, p in patterns.items()}
        for role in roles[:-1]:
            await role.wait_metrics()
        await wait_consumers(amqp_url, [f"{settings.broker_namespace}.sub.{n}" for n in enabled])
        await roles[-1].wait_metrics()
        err.print(
            "roles: "
            + ", ".join(f"`{r.shown}` (pid {r.proc.pid})" for r in roles)
            + f"; subscribers {', '.join(enabled)}; CAPSTAN_LOG_LEVEL={ROLE_LOG_LEVEL}"
        )
        steps: list[dict[str, Any]] = []
        with progress_bar() as progress:
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
    roles: list[ChildProcess],
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
    lo = await max_outbox_id(container)
    before = await scrape_all(roles, METRIC_FAMILIES)
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
    hi = await max_outbox_id(container)

    # Drain: until every event is published and done by every subscriber bound to it.
    progress.update(task, description=f"{label}: draining", completed=0)
    drain_started = time.monotonic()
    drained = False
    while time.monotonic() - drain_started < opts.drain_timeout:
        done_by = handled(before, await scrape_all(roles, METRIC_FAMILIES))
        now = await outbox_progress(container, lo, hi, patterns, done_by)
        progress.update(task, total=max(now.expected, 1), completed=now.done)
        if now.published == now.rows and now.done >= now.expected:
            drained = True
            break
        for role in roles:
            role.check_alive()
        await asyncio.sleep(DRAIN_POLL_S)
    drain_s = time.monotonic() - drain_started
    progress.update(task, description=f"{label}: done", visible=False)
    after = await scrape_all(roles, METRIC_FAMILIES)

    events_times = await event_times(container, lo, hi)
    achieved = stats.achieved_rate()
    # Per event, exactly: the audit log's recorded_at (the ordered subscriber, last under load).
    # The other subscribers keep no per-event record on PostgreSQL: their own end-to-end
    # histograms give the share each finished within the target.
    analysis = analyze_step(
        events_times,
        {name: p for name, p in patterns.items() if name == "audit"},
        offered_rate=rate,
        achieved_rate=achieved,
        write_errors=stats.errors,
    )
    view = metrics_view(before, after)
    p99 = analysis["latency"]["p99_ms"]
    if p99 is not None and p99 >= TARGET_P99_MS:
        analysis["not_sustained_because"].append(
            f"p99 {p99:.0f} ms >= {TARGET_P99_MS:g} ms (commit -> audit log)"
        )
    for sub, h in sorted(view["ack_latency_histogram"].items()):
        if h["share_within_100ms"] < 0.99:
            analysis["not_sustained_because"].append(
                f"{sub}: {h['share_within_100ms']:.1%} of events handled within 100 ms (< 99%)"
            )
    analysis["sustained"] = not analysis["not_sustained_because"]
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
        "cpu_cores_during_load": cpu_load.cores_since(
            cpu_before,
            bench="bench_writers",
            servers={comm: comm for comm in SERVER_COMMS},
            digits=3,
            other=True,
        ),
        "metrics": view,
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
        **result_header("events", environment, invalid),
        "target": target,
        "max_sustained_rate": max_sustained(steps),
        "steps": steps,
    }


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
            fmt(lat["p50_ms"], ".1f"),
            fmt(lat["p90_ms"], ".1f"),
            fmt(lat["p99_ms"], ".1f"),
            fmt(lat["max_ms"], ".0f"),
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
                f"{fmt(s['stages'][n]['p50_ms'], '.0f')} / {fmt(s['stages'][n]['p99_ms'], '.0f')}"
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
        f"measured p99 {fmt(t['measured_p99_ms'], '.1f')} ms: {mark} (informational)"
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
    print_invalid(result)


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
    result = measured(
        "events",
        lambda: measure(opts),
        cleaned_up="the roles, broker namespace and scratch database were cleaned up",
    )
    from capstan_bench.plot import plot_events

    publish(result, output or default_output("events", now), render, plot_events)
