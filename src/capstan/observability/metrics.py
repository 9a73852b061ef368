"""Prometheus metrics. One registry per process (built by the container, never at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "capstan_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "capstan_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "capstan_http_requests_in_flight", "HTTP requests being answered now.", registry=r
        )
        self.cache_requests = Counter(
            "capstan_cache_requests_total",
            "Cache lookups by result: hit, miss, bypass (client asked) or degraded (cache down).",
            ["cache", "result"],
            registry=r,
        )
        self.cache_fills = Counter(
            "capstan_cache_fills_total",
            "Cache fills after a miss; refused means a newer version or tombstone was there.",
            ["cache", "outcome"],
            registry=r,
        )
        self.cache_invalidations = Counter(
            "capstan_cache_invalidations_total",
            "Invalidations after writes; deferred means the cache was down and it is retried.",
            ["cache", "outcome"],
            registry=r,
        )
        self.db_reads_coalesced = Counter(
            "capstan_cache_coalesced_reads_total",
            "Misses that waited for another request's database read of the same key.",
            ["cache"],
            registry=r,
        )
        self.rate_limited = Counter(
            "capstan_rate_limited_total", "Requests refused with 429.", registry=r
        )
        self.dependency_up = Gauge(
            "capstan_dependency_up",
            "1 when the dependency answered the last readiness probe.",
            ["dependency"],
            registry=r,
        )
