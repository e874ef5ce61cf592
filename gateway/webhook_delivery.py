"""Webhook delivery (issue 17): the dispatcher that turns the outbox stream into delivery jobs and
the workers that deliver them, signed, at least once. Both run in every admin API process.

Dispatcher: the consumer group on ``<prefix>:events``; each entry's event is resolved (a key
change: its activity log event, dropped if it has not landed after ``grace``), a job is queued per
subscribed endpoint (the job id is event|endpoint: reading an entry twice queues nothing twice),
then the entry is acknowledged and deleted. An entry left pending by a dead process is taken over.
Workers: claim due jobs (gateway.store.webhooks), POST them to the address that was checked
(SSRF policy: gateway.urlpolicy, at every delivery), no redirects, timeouts and a response cap,
then record the result: delivered, retried with backoff, or a dead letter after the bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from dataclasses import dataclass

import aiohttp
import msgspec
from aiohttp.resolver import ThreadedResolver
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway import webhooks
from gateway.events import TEST, change_payload, payload
from gateway.model import rfc3339
from gateway.store import FAULTS
from gateway.store.webhooks import Claimed, WebhookStore
from gateway.urlpolicy import UrlRefused, address_refused, check_url

log = logging.getLogger("gateway.webhooks")
RESULTS = ("delivered", "failed", "dead", "refused", "dropped", "overflow")
ENTRY_ATTEMPTS = 3  # tries of an outbox entry whose handling raises a bug before it is dropped (W4)
_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class DeliveryConfig:
    """The --webhooks-* settings a process delivers with (gateway.config.AdminSettings)."""

    allow_private: bool = False
    max_attempts: int = 10
    retry_base: float = 300.0
    retry_cap: float = 8 * 3600.0
    timeout: float = 10.0
    connect_timeout: float = 3.0
    max_response: int = 64 * 1024
    concurrency: int = 16
    per_endpoint: int = 4
    visibility: float = 60.0
    poll: float = 0.5
    grace: float = 30.0
    scan: int = 1000  # endpoints a claim visits
    max_queued: int = 10_000
    test_sends: int = 10
    rotation_grace: float = 86400.0

    @classmethod
    def from_settings(cls, s) -> DeliveryConfig:
        return cls(s.webhooks_allow_private, s.webhooks_max_attempts, s.webhooks_retry_base, s.webhooks_retry_cap,
                   s.webhooks_timeout, s.webhooks_connect_timeout, s.webhooks_max_response, s.webhooks_concurrency,
                   s.webhooks_per_endpoint, max(s.webhooks_visibility, s.webhooks_timeout + 1), s.webhooks_poll,
                   s.webhooks_grace, 1000, s.webhooks_max_queued, s.webhooks_test_sends, s.webhooks_rotation_grace)


class WebhookMetrics:
    """``gateway_admin_webhook_*`` (docs/webhooks.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter("gateway_admin_webhook_deliveries", "Webhook delivery attempts by result",
                                  ["result"], registry=registry)
        for result in RESULTS:
            self.deliveries.labels(result)
        self.queued = Gauge("gateway_admin_webhook_queue_depth", "Webhook jobs queued or in flight (all processes)",
                            registry=registry)
        self.dead = Gauge("gateway_admin_webhook_dead_letters", "Webhook jobs dead-lettered (listed, last 7 days)",
                          registry=registry)
        self.unread = Gauge("gateway_admin_webhook_outbox_unread",
                            "Outbox stream entries the webhooks consumer group has not read yet", registry=registry)
        self.pending = Gauge("gateway_admin_webhook_outbox_pending",
                             "Outbox stream entries read but not yet handled", registry=registry)
        self.bad_entries = Counter("gateway_admin_webhook_bad_entries",
                                   "Outbox entries dropped because handling them kept failing", registry=registry)
        self.task_errors = Counter("gateway_admin_webhook_task_errors",
                                   "Unexpected errors in the webhook dispatcher and workers (each logged)",
                                   ["task"], registry=registry)
        for task in ("dispatcher", "workers"):
            self.task_errors.labels(task)


class Refused(OSError):
    """A host resolved to an address the policy refuses (raised inside the connector)."""


class CheckedResolver(ThreadedResolver):
    """DNS answers filtered by the SSRF policy: the connector connects only to an address that
    was checked in this very lookup (no cache: a rebinding answer is checked again)."""

    def __init__(self, allow_private: bool) -> None:
        super().__init__()
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        found = await super().resolve(host, port, family)
        for info in found:
            reason = address_refused(info["host"], self.allow_private)
            if reason:
                # SECURITY: one refused address refuses the host (no picking among the answers).
                raise Refused(f"{host} resolves to a refused address: {reason}")
        return found


def new_session(cfg: DeliveryConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=CheckedResolver(cfg.allow_private), use_dns_cache=False,
                                     limit=cfg.concurrency, force_close=True)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False,
                                 timeout=aiohttp.ClientTimeout(total=cfg.timeout, sock_connect=cfg.connect_timeout))


def key_view(record) -> dict | None:
    """The key as a payload names it (never a secret or its digest)."""
    if record is None:
        return None
    return {"id": record.id, "name": record.name, "prefix": record.prefix, "scopes": list(record.scopes),
            "expires_at": rfc3339(record.expires_at) if record.expires_at else None,
            "revoked_at": rfc3339(record.revoked_at) if record.revoked_at else None}


async def fan_out(ws: WebhookStore, entry, now_ms: int, grace_ms: int, metrics: WebhookMetrics | None = None,
                  endpoints: dict | None = None) -> bool:
    """Queue the entry's event for each subscribed endpoint; False while a change's event has
    not landed yet (the entry stays pending and is read again). ``endpoints``: org -> its
    endpoints, kept for one batch of entries (one read per org, not per entry)."""
    if entry is None:
        return True  # not an entry of ours: dropped
    if entry.type:
        event_type, body = entry.type, payload(entry.type, entry.at, entry.data)
    else:
        event, record = await ws.change_event(entry)
        if event is None:
            return now_ms - entry.at > grace_ms  # never landed: the change did not happen
        event_type, body = event.action, change_payload(event, key_view(record))
    raw = _json.encode(body)
    endpoints = {} if endpoints is None else endpoints
    if entry.org_id not in endpoints:
        endpoints[entry.org_id] = await ws.endpoints(entry.org_id)
    for endpoint in endpoints[entry.org_id]:
        if endpoint.wants(event_type):
            if not await ws.enqueue(webhooks.job_id(entry.id, endpoint.id), now_ms, entry.org_id, entry.id,
                                    event_type, raw, now_ms):
                _count(metrics, "overflow")
    return True


async def queue_test(ws: WebhookStore, endpoint: webhooks.Endpoint, now_ms: int,
                     metrics: WebhookMetrics | None = None) -> str:
    """A webhook.test delivery to this endpoint only; its event id."""
    event_id = "evt_test_" + os.urandom(8).hex()
    raw = _json.encode(payload(TEST, now_ms, {"endpoint_id": endpoint.id, "org_id": endpoint.org_id}))
    if not await ws.enqueue(webhooks.job_id(event_id, endpoint.id), now_ms, endpoint.org_id, event_id, TEST, raw,
                            now_ms):
        _count(metrics, "overflow")
    return event_id


async def dispatcher(ws: WebhookStore, cfg: DeliveryConfig, consumer: str, clock=time.time,
                     metrics: WebhookMetrics | None = None) -> None:
    """Read the stream for ever (cancelled at shutdown). Survives anything: a Redis fault is
    retried, a bug is logged and backed off from, an entry whose handling keeps raising is
    dropped after ENTRY_ATTEMPTS tries (W4)."""
    reclaim_at, housekeeping_at, grouped = 0.0, 0.0, False
    failures: dict[str, int] = {}  # entry id -> failed tries in this process
    backoff = cfg.poll
    while True:
        entries = []
        try:
            if not grouped:
                grouped = await ws.ensure_group()
            if grouped:
                if time.monotonic() >= reclaim_at:
                    entries += await ws.reclaim(consumer, int(min(5.0, cfg.grace) * 1000), 100)
                    reclaim_at = time.monotonic() + 1.0
                entries += await ws.read(consumer, 100, None)
                now = int(clock() * 1000)
                done, cache = [], {}
                for sid, entry in entries:
                    if await _handle(ws, cfg, metrics, sid, entry, now, cache, failures):
                        done.append(sid)
                await ws.handled(done)
                if time.monotonic() >= housekeeping_at:
                    unread, pending = await ws.trim_outbox()
                    if metrics is not None:
                        metrics.unread.set(unread)
                        metrics.pending.set(pending)
                    housekeeping_at = time.monotonic() + 5.0
            backoff = cfg.poll
        except FAULTS as exc:
            _raise_if_cancelled()
            # Also the group's loss (NOGROUP: the stream was deleted): created again next time.
            log.warning("webhooks: dispatcher failed (%s); retrying", type(exc).__name__)
            entries, grouped = [], False
        except Exception as exc:  # a bug: logged (type only, no entry data), backed off from, survived
            _raise_if_cancelled()
            log.error("webhooks: dispatcher error (%s); retrying in %.1f s", type(exc).__name__, backoff)
            if metrics is not None:
                metrics.task_errors.labels("dispatcher").inc()
            entries, grouped = [], False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
        _raise_if_cancelled()  # a cancellation some library swallowed (shutdown) still stops the loop
        if not entries:
            await asyncio.sleep(cfg.poll)


async def _handle(ws: WebhookStore, cfg: DeliveryConfig, metrics: WebhookMetrics | None, sid: str, entry, now: int,
                  cache: dict, failures: dict[str, int]) -> bool:
    """One entry: fan_out, and whether it is handled. A Redis fault propagates (the batch is
    retried); any other exception is a poisoned entry: kept pending and tried again, then dropped
    (acknowledged, counted) after ENTRY_ATTEMPTS tries."""
    try:
        return await fan_out(ws, entry, now, int(cfg.grace * 1000), metrics, cache)
    except FAULTS:
        raise
    except Exception as exc:
        _raise_if_cancelled()
        tries = failures[sid] = failures.get(sid, 0) + 1
        if len(failures) > 10_000:
            failures.clear()
        if tries < ENTRY_ATTEMPTS:
            log.warning("webhooks: outbox entry %s failed (%s), try %d of %d", sid, type(exc).__name__, tries,
                        ENTRY_ATTEMPTS)
            return False
        log.error("webhooks: outbox entry %s dropped after %d failed tries (%s)", sid, tries, type(exc).__name__)
        failures.pop(sid, None)
        if metrics is not None:
            metrics.bad_entries.inc()
        return True


async def workers(ws: WebhookStore, cfg: DeliveryConfig, metrics: WebhookMetrics | None, clock=time.time) -> None:
    """Claim and deliver due jobs for ever, at most ``cfg.concurrency`` at a time in this process."""
    inflight: set[asyncio.Task] = set()
    gauges_at = 0.0
    migrated = False
    async with new_session(cfg) as session:
        try:
            while True:
                claimed = []
                try:
                    if not migrated:
                        await ws.migrate()
                        migrated = True
                    free = cfg.concurrency - len(inflight)
                    if free > 0:
                        claimed = await ws.claim(int(clock() * 1000), int(cfg.visibility * 1000), free, cfg.scan,
                                                 cfg.per_endpoint)
                    if metrics is not None and time.monotonic() >= gauges_at:
                        queued, dead = await ws.depth()
                        metrics.queued.set(queued)
                        metrics.dead.set(dead)
                        gauges_at = time.monotonic() + 5.0
                except FAULTS as exc:
                    _raise_if_cancelled()
                    log.warning("webhooks: claim failed (%s); retrying", type(exc).__name__)
                except Exception as exc:  # a bug: logged, backed off from, survived (W4)
                    _raise_if_cancelled()
                    log.error("webhooks: workers error (%s); retrying", type(exc).__name__)
                    if metrics is not None:
                        metrics.task_errors.labels("workers").inc()
                    await asyncio.sleep(1.0)
                for job in claimed:
                    task = asyncio.create_task(deliver(ws, cfg, metrics, session, job, clock))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                _raise_if_cancelled()
                if not claimed:
                    await asyncio.sleep(cfg.poll)
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)


async def deliver(ws: WebhookStore, cfg: DeliveryConfig, metrics: WebhookMetrics | None,
                  session: aiohttp.ClientSession, job: Claimed, clock=time.time) -> str:
    """One attempt of one job; its result (one of RESULTS)."""
    job_id, attempt, org_id, event_id, _, body = job
    try:
        endpoint = await ws.endpoint(org_id, webhooks.endpoint_of(job_id))
        if endpoint is None:
            await ws.finish(job_id, "drop", int(clock() * 1000))
            return _count(metrics, "dropped")
        now = int(clock() * 1000)
        if endpoint.expired_previous(now):  # the rotation grace is over: the old secret is deleted
            await ws.replace_endpoint(endpoint, endpoint.without_previous())
            endpoint = endpoint.without_previous()
        if attempt > cfg.max_attempts:  # its last attempts' processes died mid-delivery
            await ws.finish(job_id, "dead", int(clock() * 1000), error="attempts exhausted")
            return _count(metrics, "dead")
        status, error = await post(session, cfg, endpoint, event_id, body, clock)
        now = int(clock() * 1000)
        if status is not None and 200 <= status < 300:
            await ws.finish(job_id, "ok", now, status=status)
            return _count(metrics, "delivered")
        result = "refused" if error.startswith("refused") else "failed"
        if attempt >= cfg.max_attempts:
            await ws.finish(job_id, "dead", now, status=status, error=error)
            _count(metrics, result)
            return _count(metrics, "dead")
        wait = webhooks.backoff_ms(attempt, int(cfg.retry_base * 1000), int(cfg.retry_cap * 1000), random.random())
        await ws.finish(job_id, "retry", now, status=status, error=error, next_at=now + wait)
        return _count(metrics, result)
    except FAULTS as exc:
        _raise_if_cancelled()
        # The claim expires and the job is attempted again (by any process).
        log.warning("webhooks: recording a delivery failed (%s)", type(exc).__name__)
        return "failed"
    except Exception as exc:
        _raise_if_cancelled()
        # A bug: the claim expires and the job is attempted again, up to the attempts bound
        # (each claim counts one), then dead-lettered.
        log.error("webhooks: delivery of %s failed (%s)", job_id, type(exc).__name__)
        if metrics is not None:
            metrics.task_errors.labels("workers").inc()
        return "failed"


async def post(session: aiohttp.ClientSession, cfg: DeliveryConfig, endpoint: webhooks.Endpoint, event_id: str,
               body: bytes, clock=time.time) -> tuple[int | None, str]:
    """POST the signed body: (status or None, error text: "" on a 2xx)."""
    try:
        check_url(endpoint.url, cfg.allow_private)  # SECURITY: again at every delivery (policy or URL changed)
    except UrlRefused as exc:
        return None, f"refused: {exc}"
    headers = webhooks.headers(endpoint.signing_secrets(int(clock() * 1000)), event_id, int(clock()), body)
    try:
        async with session.post(endpoint.url, data=body, headers=headers, allow_redirects=False) as resp:
            await resp.content.read(cfg.max_response)  # at most this much of the answer is read
            status = resp.status
    except Refused as exc:
        return None, f"refused: {exc}"
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, Refused):
            return None, f"refused: {exc.os_error}"
        return None, f"connect failed: {exc.os_error.strerror or type(exc.os_error).__name__}"
    except TimeoutError:
        return None, "timed out"
    except (aiohttp.ClientError, OSError) as exc:
        return None, f"failed: {type(exc).__name__}"
    if 200 <= status < 300:
        return status, ""
    return status, f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")


def _raise_if_cancelled() -> None:
    """redis-py may swallow a cancellation in the middle of a command or turn it into a connection
    error: a task being cancelled (shutdown) stops instead of going round again."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


def _count(metrics: WebhookMetrics | None, result: str) -> str:
    if metrics is not None:
        metrics.deliveries.labels(result).inc()
    return result
