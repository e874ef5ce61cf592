"""Every metric the gateway and the admin API export is named in the docs, and every name there exists."""

from __future__ import annotations

import re

import redis.asyncio

from prometheus_client.parser import text_string_to_metric_families

from admin_api.guard import AuthGuard
from admin_api.ops import AdminMetrics
from gateway.cache import VerdictCache
from gateway.config import AdminSettings
from gateway.limiter import Limiter
from gateway.metrics import Metrics
from gateway.ratelimit import Limit
from gateway.store.limits import BudgetStore
from gateway.throttle import FailureThrottle
from tests.support import ROOT


def test_operations_doc_lists_exactly_the_exported_metrics():
    metrics = Metrics()
    metrics.add_cache(VerdictCache(max_size=1, ttl=1, negative_ttl=1))
    metrics.add_throttle(FailureThrottle(limit=1, window=1, max_clients=1, clock=lambda: 0.0))
    metrics.requests.record("ok", "/x", 0.002)
    metrics.redis_errors.labels("verify").inc()
    metrics.flushes.labels("ok").inc()
    metrics.reloads.labels("reloaded").inc()
    limiter = Limiter(BudgetStore(redis.asyncio.Redis()))  # never connects
    limiter.stats.refuse(Limit("minute", 1), "rate_limited")
    metrics.add_limiter(limiter)
    assert documented_metrics("operations.md") == exported_metrics(metrics.render())


def test_admin_api_doc_lists_exactly_the_admin_api_metrics():
    guard = AuthGuard(AdminSettings(), clock=lambda: 0.0)
    metrics = AdminMetrics(guard)
    metrics.requests.labels("-", "404", "not_found").inc()
    metrics.reloads.labels("reloaded").inc()
    assert documented_metrics("admin-api.md") == exported_metrics(metrics.render())


def exported_metrics(text: bytes) -> set[str]:
    exported = set()
    for family in text_string_to_metric_families(text.decode()):
        if family.name.endswith("_created"):
            continue  # prometheus_client's creation timestamps, not metrics of ours
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    return exported


def documented_metrics(doc: str) -> set[str]:
    """The names in the one "Metric names:" list of ``docs/<doc>``."""
    text = (ROOT / "docs" / doc).read_text()
    assert text.count("Metric names:") == 1, f"docs/{doc}: one \"Metric names:\" list expected"
    section = text.split("Metric names:")[1].split("\n\n", 1)[0]
    documented = set()
    for name in re.findall(r"`(gateway_[a-z_{},]+)", section):
        if name.endswith("}"):  # labels: gateway_requests_total{outcome,route}
            documented.add(name.split("{", 1)[0])
        elif "{" in name:  # alternatives: gateway_cache_{hits,misses}_total
            head, rest = name.split("{", 1)
            options, tail = rest.split("}", 1)
            documented |= {head + o + tail for o in options.split(",")}
        else:
            documented.add(name)
    return documented


def test_request_counts_and_latency_histogram_render():
    metrics = Metrics()
    for seconds in (0.0004, 0.0005, 0.003, 20.0):
        metrics.requests.record("ok", "/v1/tasks", seconds)
    metrics.requests.record("invalid_api_key", "-", 0.001)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    counts = {(s.labels["outcome"], s.labels["route"]): s.value for s in families["gateway_requests"].samples
              if s.name == "gateway_requests_total"}
    assert counts == {("ok", "/v1/tasks"): 4, ("invalid_api_key", "-"): 1}
    buckets = {s.labels["le"]: s.value for s in families["gateway_request_duration_seconds"].samples
               if s.name.endswith("_bucket")}
    # le is inclusive: 0.0005 falls in the 0.0005 bucket
    assert buckets["0.0005"] == 2 and buckets["0.001"] == 3 and buckets["0.005"] == 4 and buckets["10.0"] == 4
    assert buckets["+Inf"] == 5
    total = [s.value for s in families["gateway_request_duration_seconds"].samples if s.name.endswith("_sum")]
    assert total == [sum((0.0004, 0.0005, 0.003, 20.0, 0.001))]
