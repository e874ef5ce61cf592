"""Every metric the gateway exports is named in the README, and every name there exists."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from gateway.cache import VerdictCache
from gateway.metrics import Metrics
from gateway.throttle import FailureThrottle
from tests.conftest import ROOT


def test_readme_lists_exactly_the_exported_metrics():
    metrics = Metrics()
    metrics.add_cache(VerdictCache(max_size=1, ttl=1, negative_ttl=1))
    metrics.add_throttle(FailureThrottle(limit=1, window=1, max_clients=1, clock=lambda: 0.0))
    metrics.requests.labels("ok", "/x").inc()
    metrics.redis_errors.labels("verify").inc()
    metrics.flushes.labels("ok").inc()
    metrics.reloads.labels("ok").inc()
    exported = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name.endswith("_created"):
            continue  # prometheus_client's creation timestamps, not metrics of ours
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Metric names:", 1)[1].split("\n\n", 1)[0]
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
    assert documented == exported
