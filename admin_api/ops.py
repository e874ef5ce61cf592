"""The admin API's ops side: its Prometheus metrics and the access-log line of each request.

The ops listener itself (/healthz, /readyz, /metrics on --ops-listen) is the gateway's
(gateway.app.make_ops_app), over this process's store, rules and metrics.
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from admin_api.auth import Principal
from admin_api.guard import AuthGuard
from admin_api.signin import REASONS as SIGNIN_FAILURE_REASONS
from gateway import accesslog
from gateway.metrics import LATENCY_BUCKETS, ThrottleCollector
from gateway.webhook_delivery import WebhookMetrics


# What the handlers learn about a request, for its log line.
PRINCIPAL = web.RequestKey("principal", Principal)
ORG = web.RequestKey("org_id", str)


class AdminMetrics:
    """Counters and histograms named ``gateway_admin_*`` (listed in docs/admin-api.md)."""

    def __init__(self, guard: AuthGuard) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("gateway_admin_requests", "Admin API requests by route template, status and outcome",
                                ["route", "status", "outcome"], registry=r)
        self.duration = Histogram("gateway_admin_request_duration_seconds", "Time from request to response",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.redis_errors = Counter("gateway_admin_redis_errors", "Requests answered 503 because Redis failed",
                                    registry=r)
        self.reloads = Counter("gateway_admin_rules_reloads", "scopes.yaml reloads by result", ["result"], registry=r)
        # The last-used flusher of org keys' uses (gateway.tasks.usage_flusher), as on a gateway.
        self.flushes = Counter("gateway_admin_usage_flushes", "Last-used flushes by result", ["result"], registry=r)
        self.flush_size = Histogram("gateway_admin_usage_flush_keys", "Keys written per last-used flush",
                                    buckets=(1, 10, 100, 1000, 10000), registry=r)
        self.usage_pending = Gauge("gateway_admin_usage_pending_keys", "Keys waiting for the next flush", registry=r)
        # The key-event finder (admin_api/finder.py).
        self.key_events = Counter("gateway_admin_key_events_found", "Key events found and emitted to the outbox, by type",
                                  ["type"], registry=r)
        for event_type in ("api_key.expiring", "api_key.expired", "api_key.unused"):
            self.key_events.labels(event_type)
        self.keys_auto_expired = Counter("gateway_admin_keys_auto_expired",
                                         "Keys expired by the finder for their org's expire_unused_days", registry=r)
        self.finder_ticks = Counter("gateway_admin_key_event_ticks", "Key-event finder ticks by result (ok, skipped: "
                                    "another process held the lock, error: Redis failed)", ["result"], registry=r)
        for result in ("ok", "skipped", "error"):
            self.finder_ticks.labels(result)
        # Page sign-in (admin_api/signin.py).
        self.signins = Counter("gateway_admin_signins", "Completed page sign-ins (sessions created)", registry=r)
        self.signin_failures = Counter("gateway_admin_signin_failures", "Failed page sign-ins by reason", ["reason"],
                                       registry=r)
        for reason in SIGNIN_FAILURE_REASONS:
            self.signin_failures.labels(reason)
        self.live_sessions = Gauge("gateway_admin_sessions_live", "Page sign-in sessions not past their absolute end "
                                   "(updated when /metrics is read)", registry=r)
        # Secret-scanning reports (admin_api/secret_scanning.py; docs/secret-scanning.md).
        self.scanning_reports = Counter("gateway_admin_secret_scanning_reports", "Secret-scanning reports by result "
                                        "(ok or the error code)", ["result"], registry=r)
        for result in ("ok", "invalid_signature", "missing_signature", "invalid_report", "payload_too_large",
                       "too_many_reports", "scanner_keys_unavailable", "store_unavailable"):
            self.scanning_reports.labels(result)
        self.scanning_tokens = Counter("gateway_admin_secret_scanning_tokens", "Reported tokens by label "
                                       "(true_positive: a key of ours)", ["label"], registry=r)
        for label in ("true_positive", "false_positive"):
            self.scanning_tokens.labels(label)
        self.scanning_actions = Counter("gateway_admin_secret_scanning_actions", "Keys revoked or flagged because a "
                                        "report found them", ["action"], registry=r)
        for action in ("revoked", "flagged"):
            self.scanning_actions.labels(action)
        self.scanning_key_fetches = Counter("gateway_admin_secret_scanning_key_fetches", "Fetches of the secret "
                                            "scanner's public keys by result (ok, failed)", ["result"], registry=r)
        for result in ("ok", "failed"):
            self.scanning_key_fetches.labels(result)
        self.webhooks = WebhookMetrics(r)  # webhook delivery (gateway.webhook_delivery)
        r.register(_ThrottledCollector(guard))
        r.register(ThrottleCollector(guard.throttle, prefix="gateway_admin"))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ThrottledCollector:
    def __init__(self, guard: AuthGuard) -> None:
        self.guard = guard

    def describe(self):
        return []

    def collect(self):
        yield CounterMetricFamily("gateway_admin_auth_throttled", "Requests refused with 429 too_many_failed_attempts",
                                  value=self.guard.throttled)


def log_request(metrics: AdminMetrics, request: web.Request, request_id: str, status: int, outcome: str,
                started: float) -> None:
    """Metrics and the JSON access-log line of one admin request: who and what, never the
    Authorization header, the query string or the body."""
    duration = time.perf_counter() - started
    route = request.match_info.route.resource
    template = route.canonical if route is not None else None
    principal = request.get(PRINCIPAL)
    metrics.requests.labels(template or "-", str(status), outcome).inc()
    metrics.duration.observe(duration)
    accesslog.write(orjson.dumps({
        "request_id": request_id, "method": request.method,
        "path": request.path,  # never the query string: it may carry secrets
        "route": template,
        "org_id": request.get(ORG) or (principal.org_id if principal else None),
        "key_id": principal.key_id if principal else None,  # None for operators and people
        "actor": principal.actor if principal else None,
        "status": status, "outcome": outcome, "duration_ms": round(duration * 1000, 3),
    }))
