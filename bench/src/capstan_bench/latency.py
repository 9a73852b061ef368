"""The pure arithmetic of `capstan bench events`: the open-loop schedule, the write mix,
percentiles, which subscribers an event must reach, and when a rate step counts as sustained;
the percentiles serve the other benchmarks too. Nothing here does I/O, so
tests/bench/test_events_*.py cover it directly."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from capstan.broker.port import topic_matches

# A step is sustained when every one of these holds (bench/README.md, "Sustained"):
MIN_ACHIEVED_SHARE = 0.95  # the writers committed >= 95% of the offered rate
DRAIN_GRACE_S = 5.0  # every event of the step was done <= 5 s after the step's last commit
# p99 of the last quarter of the step (by commit time) <= 2 x the first quarter's + 50 ms:
# a backlog that grows during the step makes late events wait longer than early ones.
TREND_FACTOR = 2.0
TREND_SLACK_MS = 50.0


def schedule(rate: float, duration_s: float) -> list[float]:
    """Open-loop send offsets in seconds from the step's start: i / rate, i = 0 .. n-1."""
    if rate <= 0 or duration_s <= 0:
        return []
    n = round(rate * duration_s)
    return [i / rate for i in range(n)]


def write_kind(i: int, update_share: float) -> str:
    """`create` or `update` for the i-th write, spreading updates evenly (deterministic)."""
    if update_share <= 0:
        return "create"
    if update_share >= 1:
        return "update"
    return (
        "update" if math.floor((i + 1) * update_share) > math.floor(i * update_share) else "create"
    )


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (the smallest value with at least p% of values at or below it)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not in [0, 100]")
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def nearest_percentile(values: Sequence[float], p: float) -> float:
    """The value at index round(p% of (n - 1)) of the sorted values (numpy's `nearest`); what
    `capstan bench search` has always reported, so its results stay comparable."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary_ms(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p90, p99, max of millisecond values (None when empty), rounded to 0.1 ms."""
    if not values:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p90_ms": round(percentile(values, 90), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(max(values), 1),
    }


def expected_subscribers(
    routing_key: str, patterns: Mapping[str, Iterable[str]]
) -> tuple[str, ...]:
    """The subscribers whose queue bindings match the routing key, in the mapping's order."""
    return tuple(
        name for name, pats in patterns.items() if any(topic_matches(p, routing_key) for p in pats)
    )


@dataclass
class EventTimes:
    """One event of a step, from the outbox and processed_events."""

    event_id: str
    routing_key: str
    committed: datetime  # the envelope's `time` (taken in the writer's transaction)
    published: datetime | None  # outbox.published_at (the relay, after the broker's confirm)
    processed: dict[str, datetime] = field(default_factory=dict)  # subscriber -> processed_at

    def done(self, expected: Sequence[str]) -> datetime | None:
        """The latest processed_at among the expected subscribers; None if one is missing."""
        if any(name not in self.processed for name in expected):
            return None
        return max((self.processed[name] for name in expected), default=self.published)


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


@dataclass
class StepVerdict:
    sustained: bool
    reasons: list[str]  # why not, when not


def judge_step(
    *,
    offered_rate: float,
    achieved_rate: float,
    write_errors: int,
    incomplete: int,
    drain_after_end_s: float | None,
    early_p99_ms: float | None,
    late_p99_ms: float | None,
) -> StepVerdict:
    """Apply the sustained criterion (constants above) to one step's figures."""
    reasons: list[str] = []
    if write_errors:
        reasons.append(f"{write_errors} writes failed")
    if achieved_rate < MIN_ACHIEVED_SHARE * offered_rate:
        reasons.append(
            f"writers committed {achieved_rate:.0f}/s < {MIN_ACHIEVED_SHARE:.0%} "
            f"of {offered_rate:g}/s"
        )
    if incomplete:
        reasons.append(f"{incomplete} events not done by every subscriber at the drain deadline")
    if drain_after_end_s is not None and drain_after_end_s > DRAIN_GRACE_S:
        reasons.append(
            f"last event done {drain_after_end_s:.1f} s after the step's last commit "
            f"(> {DRAIN_GRACE_S:g} s)"
        )
    if early_p99_ms is not None and late_p99_ms is not None:
        limit = TREND_FACTOR * early_p99_ms + TREND_SLACK_MS
        if late_p99_ms > limit:
            reasons.append(
                f"latency grew during the step: last-quarter p99 {late_p99_ms:.0f} ms > "
                f"{TREND_FACTOR:g} x first-quarter p99 {early_p99_ms:.0f} ms + {TREND_SLACK_MS:g}"
            )
    return StepVerdict(not reasons, reasons)


def analyze_step(
    events: Sequence[EventTimes],
    patterns: Mapping[str, Iterable[str]],
    *,
    offered_rate: float,
    achieved_rate: float,
    write_errors: int,
) -> dict[str, Any]:
    """Latency figures of one step and its verdict.

    latency = done - committed, done = the latest processed_at among the subscribers bound to
    the event's routing key. Stages: relay = published_at - committed; per subscriber =
    processed_at - committed.
    """
    pats = {name: tuple(p) for name, p in patterns.items()}
    ordered = sorted(events, key=lambda e: e.committed)
    latencies: list[float] = []
    by_kind: dict[str, list[float]] = {}
    relay: list[float] = []
    per_sub: dict[str, list[float]] = {name: [] for name in pats}
    incomplete = 0
    last_done: datetime | None = None
    timed: list[tuple[datetime, float]] = []
    for e in ordered:
        if e.published is not None:
            relay.append(_ms(e.published, e.committed))
        for name, at in e.processed.items():
            if name in per_sub:
                per_sub[name].append(_ms(at, e.committed))
        done = e.done(expected_subscribers(e.routing_key, pats))
        if done is None:
            incomplete += 1
            continue
        ms = _ms(done, e.committed)
        latencies.append(ms)
        by_kind.setdefault(e.routing_key, []).append(ms)
        timed.append((e.committed, ms))
        last_done = done if last_done is None or done > last_done else last_done
    quarter = len(timed) // 4
    early = [ms for _, ms in timed[:quarter]]
    late = [ms for _, ms in timed[len(timed) - quarter :]] if quarter else []
    early_p99 = percentile(early, 99) if early else None
    late_p99 = percentile(late, 99) if late else None
    drain_after_end_s = (
        (last_done - ordered[-1].committed).total_seconds()
        if ordered and last_done is not None
        else None
    )
    verdict = judge_step(
        offered_rate=offered_rate,
        achieved_rate=achieved_rate,
        write_errors=write_errors,
        incomplete=incomplete,
        drain_after_end_s=drain_after_end_s,
        early_p99_ms=early_p99,
        late_p99_ms=late_p99,
    )
    return {
        "events": len(ordered),
        "incomplete": incomplete,
        "latency": summary_ms(latencies),
        "latency_by_routing_key": {k: summary_ms(v) for k, v in sorted(by_kind.items())},
        "stages": {
            "relay_published": summary_ms(relay),
            **{f"{name}_processed": summary_ms(v) for name, v in per_sub.items()},
        },
        "first_quarter_p99_ms": None if early_p99 is None else round(early_p99, 1),
        "last_quarter_p99_ms": None if late_p99 is None else round(late_p99, 1),
        "timeline": timeline(timed, ordered[0].committed) if ordered else [],
        "completions_per_s": completions(ordered, ordered[0].committed) if ordered else {},
        "last_done_after_last_commit_s": (
            None if drain_after_end_s is None else round(drain_after_end_s, 2)
        ),
        "sustained": verdict.sustained,
        "not_sustained_because": verdict.reasons,
    }


def timeline(
    points: Sequence[tuple[datetime, float]], start: datetime, bucket_s: float = 1.0
) -> list[dict[str, Any]]:
    """Per `bucket_s` window of commit time (from `start`): events, p50 and p99 latency."""
    buckets: dict[int, list[float]] = {}
    for committed, ms in points:
        index = int((committed - start).total_seconds() // bucket_s)
        buckets.setdefault(index, []).append(ms)
    return [
        {
            "t_s": round(index * bucket_s, 3),
            "events": len(values),
            "p50_ms": round(percentile(values, 50), 1),
            "p99_ms": round(percentile(values, 99), 1),
        }
        for index, values in sorted(buckets.items())
    ]


def completions(
    events: Sequence[EventTimes], start: datetime, bucket_s: float = 1.0
) -> dict[str, list[int]]:
    """Per subscriber (and `relay`), how many events it finished in each `bucket_s` window
    after `start`: a stalled or saturated stage shows as a gap or a flat ceiling."""
    stamps: dict[str, list[datetime]] = {}
    for e in events:
        if e.published is not None:
            stamps.setdefault("relay", []).append(e.published)
        for name, at in e.processed.items():
            stamps.setdefault(name, []).append(at)
    result: dict[str, list[int]] = {}
    for name, times in stamps.items():
        indexes = [max(int((t - start).total_seconds() // bucket_s), 0) for t in times]
        counts = [0] * (max(indexes) + 1)
        for i in indexes:
            counts[i] += 1
        result[name] = counts
    return result


def max_sustained(steps: Sequence[Mapping[str, Any]]) -> float | None:
    """The highest offered rate among sustained steps (None when none was)."""
    rates = [float(s["offered_rate"]) for s in steps if s.get("sustained")]
    return max(rates) if rates else None


def parse_rates(text: str) -> list[int]:
    """`500,1000,2000` -> [500, 1000, 2000]; positive integers, kept in the given order."""
    rates: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError as exc:
            raise ValueError(f"not a rate: {part!r} (events/s, an integer)") from exc
        if value <= 0:
            raise ValueError(f"rates must be positive, got {value}")
        rates.append(value)
    if not rates:
        raise ValueError("no rates given")
    return rates
