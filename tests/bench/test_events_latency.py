"""The pure logic of `capstan bench events`: schedule, write mix, percentiles, which
subscribers an event must reach, the per-step analysis and the sustained criterion."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from capstan_bench.common import BenchError
from capstan_bench.events import broker_names, metrics_view
from capstan_bench.latency import (
    DRAIN_GRACE_S,
    EventTimes,
    analyze_step,
    completions,
    expected_subscribers,
    judge_step,
    max_sustained,
    nearest_percentile,
    parse_rates,
    percentile,
    schedule,
    summary_ms,
    timeline,
    write_kind,
)
from capstan_bench.rabbitmq import resolve_amqp

PATTERNS = {
    "indexer": ("document.*",),
    "cache": ("document.updated", "document.deleted"),
    "audit": ("#",),
}
T0 = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)


def ms(n: float) -> timedelta:
    return timedelta(milliseconds=n)


# ---------------------------------------------------------------- schedule and mix


def test_schedule_is_open_loop_at_the_rate() -> None:
    offsets = schedule(500, 2)
    assert len(offsets) == 1000
    assert offsets[0] == 0.0
    assert offsets[1] == pytest.approx(0.002)
    assert offsets[-1] == pytest.approx(1.998)
    assert schedule(0, 10) == [] and schedule(100, 0) == []


def test_schedule_rounds_fractional_counts() -> None:
    assert len(schedule(3, 0.5)) == 2  # 1.5 rounds to 2 (banker's rounding keeps it even)
    assert len(schedule(10, 0.25)) == 2


def test_write_kind_spreads_updates_evenly() -> None:
    kinds = [write_kind(i, 0.5) for i in range(10)]
    assert kinds.count("update") == 5
    assert all(a != b for a, b in itertools.pairwise(kinds))  # alternating
    quarter = [write_kind(i, 0.25) for i in range(100)]
    assert quarter.count("update") == 25
    assert {write_kind(i, 0.0) for i in range(10)} == {"create"}
    assert {write_kind(i, 1.0) for i in range(10)} == {"update"}


# ---------------------------------------------------------------- percentiles


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input


def test_percentile_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_nearest_percentile_is_the_index_rounded() -> None:
    """`capstan bench search`'s percentile: index round(p% of (n - 1)), unlike nearest rank."""
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert nearest_percentile(values, 50) == 51  # index round(49.5) = 50 (half to even)
    assert percentile(values, 50) == 50
    assert nearest_percentile(values, 99) == 99  # index round(98.01) = 98
    assert nearest_percentile([3.0, 1.0, 2.0], 100) == 3.0


def test_summary_ms() -> None:
    assert summary_ms([])["p99_ms"] is None
    s = summary_ms([1.04, 2.0, 3.0, 100.0])
    assert s == {"count": 4, "p50_ms": 2.0, "p90_ms": 100.0, "p99_ms": 100.0, "max_ms": 100.0}


# ---------------------------------------------------------------- who must see an event


def test_expected_subscribers_follow_topic_bindings() -> None:
    assert expected_subscribers("document.created", PATTERNS) == ("indexer", "audit")
    assert expected_subscribers("document.updated", PATTERNS) == ("indexer", "cache", "audit")
    assert expected_subscribers("task.queued", PATTERNS) == ("audit",)


def test_done_is_the_latest_expected_subscriber() -> None:
    e = EventTimes(
        "e1",
        "document.updated",
        T0,
        T0 + ms(5),
        {"indexer": T0 + ms(8), "cache": T0 + ms(20), "audit": T0 + ms(12), "other": T0 + ms(99)},
    )
    assert e.done(("indexer", "cache", "audit")) == T0 + ms(20)
    assert e.done(("indexer", "cache", "audit", "notifier")) is None  # notifier missing


# ---------------------------------------------------------------- the sustained criterion


def verdict(**overrides: object) -> list[str]:
    args: dict[str, object] = {
        "offered_rate": 500.0,
        "achieved_rate": 498.0,
        "write_errors": 0,
        "incomplete": 0,
        "drain_after_end_s": 0.05,
        "early_p99_ms": 20.0,
        "late_p99_ms": 25.0,
    }
    args.update(overrides)
    v = judge_step(**args)  # type: ignore[arg-type]
    assert v.sustained == (not v.reasons)
    return v.reasons


def test_a_healthy_step_is_sustained() -> None:
    assert verdict() == []
    assert verdict(achieved_rate=475.0) == []  # exactly 95%
    assert verdict(drain_after_end_s=DRAIN_GRACE_S) == []
    assert verdict(late_p99_ms=90.0) == []  # 2 x 20 + 50


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"achieved_rate": 470.0}, "writers committed 470/s"),
        ({"write_errors": 3}, "3 writes failed"),
        ({"incomplete": 7}, "7 events not done"),
        ({"drain_after_end_s": 5.5}, "5.5 s after the step's last commit"),
        ({"late_p99_ms": 91.0}, "latency grew during the step"),
    ],
)
def test_each_criterion_can_fail_a_step(overrides: dict[str, object], fragment: str) -> None:
    reasons = verdict(**overrides)
    assert len(reasons) == 1 and fragment in reasons[0]


def steady_events(
    rate: float, seconds: float, latency_ms: float, grow_ms_per_s: float = 0.0
) -> list[EventTimes]:
    events = []
    for i, offset in enumerate(schedule(rate, seconds)):
        committed = T0 + timedelta(seconds=offset)
        lat = latency_ms + grow_ms_per_s * offset
        rk = "document.created" if i % 2 == 0 else "document.updated"
        processed = {n: committed + ms(lat) for n in expected_subscribers(rk, PATTERNS)}
        processed["audit"] = committed + ms(lat)  # the slowest is `lat` after commit
        processed["indexer"] = committed + ms(lat / 2)
        events.append(EventTimes(f"e{i}", rk, committed, committed + ms(2), processed))
    return events


def test_analyze_a_steady_step() -> None:
    events = steady_events(100, 4, latency_ms=12.0)
    a = analyze_step(events, PATTERNS, offered_rate=100, achieved_rate=100, write_errors=0)
    assert a["sustained"], a["not_sustained_because"]
    assert a["events"] == 400 and a["incomplete"] == 0
    assert a["latency"]["p50_ms"] == 12.0 and a["latency"]["p99_ms"] == 12.0
    assert a["stages"]["relay_published"]["p50_ms"] == 2.0
    assert a["stages"]["indexer_processed"]["p50_ms"] == 6.0
    assert a["stages"]["cache_processed"]["count"] == 200  # updates only
    assert set(a["latency_by_routing_key"]) == {"document.created", "document.updated"}
    assert [w["events"] for w in a["timeline"]] == [100, 100, 100, 100]
    # Done 12 ms after commit: the last event of each second is done in the next one.
    assert a["completions_per_s"]["audit"] == [99, 100, 100, 100, 1]


def test_analyze_a_step_whose_backlog_grows() -> None:
    # Latency grows by 400 ms per second of the step: the pipeline falls behind.
    events = steady_events(100, 5, latency_ms=10.0, grow_ms_per_s=400.0)
    a = analyze_step(events, PATTERNS, offered_rate=100, achieved_rate=100, write_errors=0)
    assert not a["sustained"]
    assert any("latency grew" in r for r in a["not_sustained_because"])
    assert a["last_quarter_p99_ms"] > a["first_quarter_p99_ms"]


def test_analyze_counts_events_a_subscriber_never_did() -> None:
    events = steady_events(50, 2, latency_ms=10.0)
    del events[3].processed["audit"]
    a = analyze_step(events, PATTERNS, offered_rate=50, achieved_rate=50, write_errors=0)
    assert a["incomplete"] == 1 and a["latency"]["count"] == 99
    assert not a["sustained"]


def test_analyze_an_empty_step() -> None:
    a = analyze_step([], PATTERNS, offered_rate=50, achieved_rate=0, write_errors=0)
    assert a["events"] == 0 and a["latency"]["p99_ms"] is None and not a["sustained"]


def test_timeline_and_completions_bucket_by_second() -> None:
    points = [(T0 + ms(100), 5.0), (T0 + ms(900), 7.0), (T0 + ms(2500), 50.0)]
    assert timeline(points, T0) == [
        {"t_s": 0.0, "events": 2, "p50_ms": 5.0, "p99_ms": 7.0},
        {"t_s": 2.0, "events": 1, "p50_ms": 50.0, "p99_ms": 50.0},
    ]
    e = EventTimes("e", "document.created", T0, T0 + ms(10), {"audit": T0 + ms(2100)})
    assert completions([e], T0) == {"relay": [1], "audit": [0, 0, 1]}


def test_max_sustained_is_the_highest_sustained_rate() -> None:
    steps = [
        {"offered_rate": 500, "sustained": True},
        {"offered_rate": 1000, "sustained": False},
        {"offered_rate": 2000, "sustained": True},  # noise can make a higher step pass
        {"offered_rate": 4000, "sustained": False},
    ]
    assert max_sustained(steps) == 2000
    assert max_sustained([{"offered_rate": 500, "sustained": False}]) is None


def test_parse_rates() -> None:
    assert parse_rates("500,1000, 2000,4000") == [500, 1000, 2000, 4000]
    assert parse_rates("250") == [250]
    for bad in ("", "500,x", "0", "-5"):
        with pytest.raises(ValueError):
            parse_rates(bad)


# ---------------------------------------------------------------- broker and metrics helpers


def test_broker_names_cover_the_contract() -> None:
    names = broker_names("bench_ab12", ["audit", "cache"], [1000, 5000])
    assert names["exchanges"] == ["bench_ab12.events", "bench_ab12.realtime"]
    assert names["queues"] == [
        "bench_ab12.sub.audit",
        "bench_ab12.sub.audit.dead",
        "bench_ab12.sub.audit.retry.1000",
        "bench_ab12.sub.audit.retry.5000",
        "bench_ab12.sub.cache",
        "bench_ab12.sub.cache.dead",
        "bench_ab12.sub.cache.retry.1000",
        "bench_ab12.sub.cache.retry.5000",
    ]


def test_resolve_amqp() -> None:
    url = "amqp://u:p@127.0.0.1:5672/"
    assert resolve_amqp({"CAPSTAN_TEST_AMQP_URL": url}) == (url, "CAPSTAN_TEST_AMQP_URL")
    both = {"CAPSTAN_BROKER_URL": "amqp://x/", "CAPSTAN_TEST_AMQP_URL": url}
    assert resolve_amqp(both) == ("amqp://x/", "CAPSTAN_BROKER_URL")
    # memory:// is not a server: fall back to the test URL, or fail.
    assert resolve_amqp({"CAPSTAN_BROKER_URL": "memory://", "CAPSTAN_TEST_AMQP_URL": url})[0] == url
    with pytest.raises(BenchError):
        resolve_amqp({"CAPSTAN_BROKER_URL": "memory://"})


def test_metrics_view_takes_deltas() -> None:
    sub = (("subscriber", "audit"),)
    before = {
        ("capstan_events_consumed_total", (("outcome", "processed"), *sub)): 10.0,
        ("capstan_event_end_to_end_seconds_bucket", (("le", "0.1"), *sub)): 8.0,
        ("capstan_event_end_to_end_seconds_count", sub): 10.0,
        ("capstan_subscriber_handle_duration_seconds_sum", sub): 1.0,
        ("capstan_subscriber_handle_duration_seconds_count", sub): 10.0,
        ("capstan_relay_batch_size_sum", ()): 10.0,
        ("capstan_relay_batch_size_count", ()): 5.0,
    }
    after = {
        ("capstan_events_consumed_total", (("outcome", "processed"), *sub)): 110.0,
        ("capstan_events_consumed_total", (("outcome", "retried"), *sub)): 2.0,
        ("capstan_event_end_to_end_seconds_bucket", (("le", "0.1"), *sub)): 58.0,
        ("capstan_event_end_to_end_seconds_count", sub): 110.0,
        ("capstan_subscriber_handle_duration_seconds_sum", sub): 1.5,
        ("capstan_subscriber_handle_duration_seconds_count", sub): 110.0,
        ("capstan_relay_batch_size_sum", ()): 110.0,
        ("capstan_relay_batch_size_count", ()): 25.0,
    }
    view = metrics_view(before, after)
    assert view["consumed"] == {"audit": {"processed": 100, "retried": 2}}
    assert view["ack_latency_histogram"] == {"audit": {"acked": 100, "share_within_100ms": 0.5}}
    assert view["mean_handle_ms"] == {"audit": 5.0}
    assert view["relay"] == {"batches": 20, "mean_batch_size": 5.0}


def test_handled_counts_final_outcomes_since_the_first_scrape() -> None:
    from capstan_bench.outbox import handled

    def key(sub: str, outcome: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return ("capstan_events_consumed_total", (("outcome", outcome), ("subscriber", sub)))

    before = {key("audit", "processed"): 10.0, key("cache", "retried"): 1.0}
    after = {
        key("audit", "processed"): 15.0,
        key("audit", "duplicate"): 1.0,
        key("cache", "retried"): 4.0,  # handled again later: not done
        key("cache", "processed"): 2.0,
        key("notifier", "dead_lettered"): 1.0,
    }
    assert handled(before, after) == {"audit": 6, "cache": 2, "notifier": 1}
