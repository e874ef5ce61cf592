"""Prometheus metrics of one gateway process, in a registry of its own (one per app)."""

from __future__ import annotations

import bisect

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Counters and histograms named ``gateway_*`` (listed in docs/operations.md)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # Counted on every request: plain integers read at scrape time, not prometheus_client's
        # locked values (about a microsecond per request on the hot path; one thread here).
        self.requests = RequestStats()
        r.register(self.requests)
        self.redis_errors = Counter("gateway_redis_errors", "Failed Redis calls", ["op"], registry=r)
        self.redis_latency = Histogram(
            "gateway_redis_duration_seconds", "Redis round trips made while verifying keys",
            buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1), registry=r,
        )
        self.invalidations = Counter("gateway_invalidations_received", "Revocation messages received", registry=r)
        self.resyncs = Counter("gateway_cache_resyncs", "Times the cache was dropped and resubscribed", registry=r)
        self.flushes = Counter("gateway_usage_flushes", "Last-used flushes by result", ["result"], registry=r)
        self.flush_size = Histogram(
            "gateway_usage_flush_keys", "Keys written per last-used flush",
            buckets=(1, 10, 100, 1000, 10000), registry=r,
        )
        self.reloads = Counter("gateway_rules_reloads", "scopes.yaml reloads by result", ["result"], registry=r)
        self.stale_served = Counter(
            "gateway_stale_verdicts_served", "Requests allowed from the cache while Redis failed (--stale-if-error)",
            registry=r,
        )
        self.throttled = Counter(
            "gateway_auth_throttled", "Requests refused with 429 too_many_failed_attempts", registry=r,
        )
        self.usage_pending = Gauge("gateway_usage_pending_keys", "Keys waiting for the next flush", registry=r)

    def add_throttle(self, throttle) -> None:
        """Export how many client addresses the failure throttle tracks."""
        self.registry.register(ThrottleCollector(throttle))

    def add_limiter(self, limits) -> None:
        """Export the per-key limiter's counters (gateway.limiter.LimiterStats) at scrape time."""
        self.registry.register(LimiterCollector(limits))

    def add_cache(self, cache) -> None:
        """Export the verdict cache's own counters at scrape time."""
        self.registry.register(_CacheCollector(cache))

    def render(self) -> bytes:
        return generate_latest(self.registry)


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class RequestStats:
    """gateway_requests_total{outcome,route} and gateway_request_duration_seconds."""

    def __init__(self) -> None:
        # (outcome, route) come from closed sets (error codes, scopes.yaml templates): small.
        self.counts: dict[tuple[str, str], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total_seconds = 0.0

    def record(self, outcome: str, route: str, seconds: float) -> None:
        key = (outcome, route)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total_seconds += seconds

    def count(self, outcome: str, route: str) -> int:
        return self.counts.get((outcome, route), 0)

    def describe(self):
        return []

    def collect(self):
        requests = CounterMetricFamily("gateway_requests", "Requests by outcome code and route template",
                                       labels=["outcome", "route"])
        for (outcome, route), n in sorted(self.counts.items()):
            requests.add_metric([outcome, route], n)
        yield requests
        cumulative, running = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            running += n
            cumulative.append((str(float(bound)) if bound != float("inf") else "+Inf", running))
        yield HistogramMetricFamily("gateway_request_duration_seconds", "Time from request to response headers",
                                    buckets=cumulative, sum_value=self.total_seconds)


class _CacheCollector:
    def __init__(self, cache) -> None:
        self.cache = cache

    def describe(self):
        return []

    def collect(self):
        c = self.cache
        for name, value in (("hits", c.hits), ("misses", c.misses), ("evictions", c.evictions)):
            yield CounterMetricFamily(f"gateway_cache_{name}", f"Verdict cache {name}", value=value)
        yield GaugeMetricFamily("gateway_cache_entries", "Keys in the verdict cache", value=len(c))
        yield GaugeMetricFamily("gateway_cache_trusted", "1 while the invalidation channel is live", value=int(c.trusted))


class ThrottleCollector:
    """How many client addresses a failure throttle tracks (``prefix``: gateway or gateway_admin)."""

    def __init__(self, throttle, prefix: str = "gateway") -> None:
        self.throttle = throttle
        self.prefix = prefix

    def describe(self):
        return []

    def collect(self):
        yield GaugeMetricFamily(f"{self.prefix}_auth_throttle_clients", "Client addresses with recent failed authentications",
                                value=len(self.throttle))
        yield CounterMetricFamily(f"{self.prefix}_auth_throttle_evictions", "Addresses forgotten to bound memory",
                                  value=self.throttle.evictions)
        yield CounterMetricFamily(f"{self.prefix}_auth_throttle_untracked",
                                  "Failures from new addresses not tracked (every tracked address blocked; they are refused)",
                                  value=self.throttle.untracked)


class LimiterCollector:
    """gateway_limit_*: the per-key rate limits and quotas of this process (gateway.limiter)."""

    def __init__(self, limits) -> None:
        self.limits = limits

    def describe(self):
        return []

    def collect(self):
        self.limits.settle_all()  # (the hot path's admits are counted when settled)
        s = self.limits.stats
        admitted = CounterMetricFamily("gateway_limit_admitted", "Requests of limited keys admitted, by limit kind "
                                       "(a key with rate windows and a quota counts in both)", labels=["kind"])
        for kind, n in sorted(s.admitted_total().items()):
            admitted.add_metric([kind], n)
        yield admitted
        refused = CounterMetricFamily("gateway_limit_refused", "Requests refused by a key's limit, by limit kind and "
                                      "code (rate_limited, quota_exceeded, rate_limit_unavailable, quota_unavailable)",
                                      labels=["kind", "code"])
        for (kind, code), n in sorted(s.refused.items()):
            refused.add_metric([kind, code], n)
        yield refused
        for name, text, value in (
                ("leases", "Budget leases granted by Redis (one per window)", s.leases),
                ("leased_units", "Request units leased from Redis", s.leased_units),
                ("returns", "Unused budgets given back to Redis (one per window)", s.returns),
                ("returned_units", "Request units given back to Redis", s.returned_units),
                ("reclaims_sent", "Reclaims published: this process found too little budget left", s.reclaims_sent),
                ("reclaims_received", "Reclaim messages of other processes heard for keys this one holds",
                 s.reclaims_received)):
            yield CounterMetricFamily(f"gateway_limit_{name}", text, value=value)
        commands = CounterMetricFamily("gateway_limit_redis_commands", "Redis commands of the limiter, by command "
                                       "(lease, return: script calls; publish)", labels=["command"])
        for command, n in sorted(s.commands.items()):
            commands.add_metric([command], n)
        yield commands
        yield GaugeMetricFamily("gateway_limit_keys", "Keys with a limiter in this process", value=len(self.limits.entries))
