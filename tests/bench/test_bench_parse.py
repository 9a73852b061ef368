"""The wrk report parser, on output captured from real wrk 4.1.0 runs on this project's machine."""

from __future__ import annotations

import pytest

from capstan_bench.wrk import WrkOutputError, parse_wrk, to_ms, wrk_command

# `capstan bench read --duration 2 --warmup 1 --rounds 1`, the cache-hit target.
HIT = """\
Running 2s test @ http://127.0.0.1:49859/v1/documents/01a21764-4310-79d5-8f67-f9130074dc56
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    17.53ms    6.49ms  58.88ms   94.44%
    Req/Sec     1.87k   255.11     2.15k    85.00%
  Latency Distribution
     50%   15.88ms
     75%   17.22ms
     90%   20.34ms
     99%   50.84ms
  3731 requests in 2.00s, 7.79MB read
Requests/sec:   1862.96
Transfer/sec:      3.89MB
"""

# wrk against `capstan dev` without an Authorization header: every response is a 401.
UNAUTHORIZED = """\
Running 1s test @ http://127.0.0.1:18777/v1/documents/nope
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.59ms   11.39ms  80.29ms   93.93%
    Req/Sec     2.59k   613.92     3.49k    81.82%
  Latency Distribution
     50%    2.87ms
     75%    3.69ms
     90%    5.23ms
     99%   69.88ms
  2837 requests in 1.10s, 1.18MB read
  Non-2xx or 3xx responses: 2837
Requests/sec:   2578.98
Transfer/sec:      1.07MB
"""

# wrk against a socket server that closes every connection after at most one response.
SOCKET_ERRORS = """\
Running 1s test @ http://127.0.0.1:18780/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.12ms  163.72us   2.21ms   66.73%
    Req/Sec     0.90k     9.81     0.91k    54.55%
  Latency Distribution
     50%    1.10ms
     75%    1.21ms
     90%    1.33ms
     99%    1.50ms
  983 requests in 1.10s, 38.40KB read
  Socket errors: connect 0, read 1966, write 0, timeout 0
Requests/sec:    893.36
Transfer/sec:     34.90KB
"""


def test_parses_a_clean_run() -> None:
    r = parse_wrk(HIT)
    assert r.requests == 3731
    assert r.duration_s == pytest.approx(2.0)
    assert r.rps == pytest.approx(1862.96)
    assert r.latency_avg_ms == pytest.approx(17.53)
    assert r.latency_stdev_ms == pytest.approx(6.49)
    assert (r.p50_ms, r.p75_ms, r.p90_ms, r.p99_ms) == pytest.approx((15.88, 17.22, 20.34, 50.84))
    assert r.non_2xx == 0
    assert r.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert r.errors == 0


def test_counts_error_responses() -> None:
    r = parse_wrk(UNAUTHORIZED)
    assert r.requests == 2837
    assert r.duration_s == pytest.approx(1.1)
    assert r.non_2xx == 2837
    assert r.errors == 2837
    assert r.p99_ms == pytest.approx(69.88)


def test_counts_socket_errors_and_reads_microseconds() -> None:
    r = parse_wrk(SOCKET_ERRORS)
    assert r.socket_errors == {"connect": 0, "read": 1966, "write": 0, "timeout": 0}
    assert r.errors == 1966
    assert r.latency_stdev_ms == pytest.approx(0.16372)
    assert r.p50_ms == pytest.approx(1.10)
    assert r.rps == pytest.approx(893.36)
    assert r.to_dict()["errors"] == 1966


def test_rejects_output_without_the_latency_distribution() -> None:
    without = "\n".join(line for line in HIT.splitlines() if "%" not in line or "Stdev" in line)
    with pytest.raises(WrkOutputError, match="Latency Distribution"):
        parse_wrk(without)
    with pytest.raises(WrkOutputError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:18779 Connection refused\n")


@pytest.mark.parametrize(
    ("value", "unit", "ms"),
    [("812.00", "us", 0.812), ("4.98", "ms", 4.98), ("1.02", "s", 1020.0), ("1.00", "m", 60000.0)],
)
def test_units(value: str, unit: str, ms: float) -> None:
    assert to_ms(value, unit) == pytest.approx(ms)


def test_command_has_latency_headers_and_one_thread() -> None:
    cmd = wrk_command(
        "wrk",
        "http://127.0.0.1:1/healthz",
        threads=1,
        connections=32,
        duration_s=10,
        timeout_s=5,
        headers={"Authorization": "Bearer k", "Cache-Control": "no-cache"},
    )
    assert cmd == [
        "wrk",
        "-t1",
        "-c32",
        "-d10s",
        "--timeout=5s",
        "--latency",
        "-H",
        "Authorization: Bearer k",
        "-H",
        "Cache-Control: no-cache",
        "http://127.0.0.1:1/healthz",
    ]
