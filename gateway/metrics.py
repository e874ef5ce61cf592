"""Prometheus metrics of one gateway process, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Counters and histograms named ``gateway_*`` (listed in the README)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._request_children: dict[tuple[str, str], object] = {}
        self.requests = Counter(
            "gateway_requests", "Requests by outcome code and route template",
            ["outcome", "route"], registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds", "Time from request to response headers",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
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

    def request_counter(self, outcome: str, route: str):
        """The requests counter's child for (outcome, route), looked up once per pair: both
        come from closed sets (error codes and scopes.yaml templates), so this stays small."""
        key = (outcome, route)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(outcome, route)
        return child

    def add_throttle(self, throttle) -> None:
        """Export how many client addresses the failure throttle tracks."""
        self.registry.register(_ThrottleCollector(throttle))

    def add_cache(self, cache) -> None:
        """Export the verdict cache's own counters at scrape time."""
        self.registry.register(_CacheCollector(cache))

    def render(self) -> bytes:
        return generate_latest(self.registry)


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


class _ThrottleCollector:
    def __init__(self, throttle) -> None:
        self.throttle = throttle

    def describe(self):
        return []

    def collect(self):
        yield GaugeMetricFamily("gateway_auth_throttle_clients", "Client addresses with recent failed authentications",
                                value=len(self.throttle))
        yield CounterMetricFamily("gateway_auth_throttle_evictions", "Addresses forgotten to bound memory",
                                  value=self.throttle.evictions)
