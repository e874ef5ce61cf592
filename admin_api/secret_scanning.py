"""``POST /v1/secret-scanning/github``: GitHub's secret-scanning partner reports (issue 17;
docs/secret-scanning.md). Public (no org credential): the body's signature authenticates it.

In this order, nothing changed by any refusal: the per-address rate limit of refused reports (429), both signature
headers (401), the media type (415), the body read up to MAX_REPORT_BYTES and no further (413),
the signature over those exact bytes with a key GitHub publishes (fetched from
--secret-scanning-keys-url and cached; an unknown key id refetches, at most once per
--secret-scanning-min-refetch; keys unobtainable: 503), then the report's shape (400). Then each
token: format and checksum (garbage costs no Redis command), the keys' records in one round
trip, the leak marks of the real, live ones in two, and the revocations (org setting
``leak_action``) through the normal acknowledged revoke. The answer is the feedback array.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Callable

import aiohttp
from aiohttp import web

from gateway import errors, keys, leaks
from gateway.model import KeyRecord, Leak
from gateway.orgsettings import REVOKE
from gateway.throttle import FailureThrottle
from gateway.config import AdminSettings
from gateway.store import FAULTS

KEY_ID_HEADER = "Github-Public-Key-Identifier"
SIGNATURE_HEADER = "Github-Public-Key-Signature"
MAX_KEYS_DOCUMENT = 256 * 1024  # bytes of the public keys document read at most
REVOKE_CONCURRENCY = 16  # acknowledged revocations of one report in flight at once
RATE_WINDOW = 60.0
MIN_BACKOFF = 5.0  # seconds without a fetch after a failed one, at least (else --secret-scanning-min-refetch)
STALE_FOR = 6 * 3600.0  # seconds keys past max-age stay usable while their refetch fails
MAX_WAITERS = 64  # reports waiting for one fetch of the keys at most; more: 503 at once

log = logging.getLogger("admin_api.secret_scanning")


class ScannerKeys:
    """The scanner's public keys: fetched on first use, again after max_age, and on a key id
    they lack at most once per min_refetch seconds. ScannerKeysUnavailable when they cannot be
    had (never a verdict on the report).

    SECURITY: the key server is not ours, and reports are public: while it is down, reports must
    not each cause a fetch or a wait. One fetch at a time, shared by every report that needs it
    (at most MAX_WAITERS wait for it; the rest are answered 503 at once); after a failed fetch
    none for ``backoff`` seconds, answered meanwhile from the keys held if they are usable, else
    503 at once; keys past max_age whose refetch fails stay usable STALE_FOR seconds more."""

    def __init__(self, settings: AdminSettings, clock: Callable[[], float], fetched=None) -> None:
        self.url = settings.secret_scanning_keys_url
        self.fetched = fetched  # the fetches counter by result (admin_api.ops), if any
        self.max_age = settings.secret_scanning_keys_max_age
        self.min_refetch = settings.secret_scanning_min_refetch
        self.backoff = max(self.min_refetch, MIN_BACKOFF)
        self.timeout = settings.secret_scanning_timeout
        self.clock = clock
        self.keys: dict | None = None
        self.fetched_at = float("-inf")
        self.failed_at = float("-inf")  # the last failed fetch
        self.refetched_at = float("-inf")  # the last fetch caused by an unknown key id
        self.fetches = 0
        self._flight: asyncio.Future | None = None
        self._waiting = 0
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._flight is not None:
            self._flight.cancel()
        if self._session is not None:
            await self._session.close()

    def _usable(self) -> bool:
        """Are the keys held fit to verify with (fresh, or stale by at most STALE_FOR)?"""
        return self.keys is not None and self.clock() - self.fetched_at < self.max_age + STALE_FOR

    def _unavailable(self) -> errors.ScannerKeysUnavailable:
        err = errors.ScannerKeysUnavailable()
        err.retry_after = max(1, math.ceil(self.failed_at + self.backoff - self.clock()))
        return err

    async def key(self, key_id: str):
        """The public key ``key_id`` names, or None when the scanner does not publish it."""
        if self.keys is None or self.clock() - self.fetched_at >= self.max_age:
            try:
                await self._refresh()
            except errors.ScannerKeysUnavailable:
                if not self._usable():
                    raise  # else the stale keys serve until STALE_FOR past max_age
        assert self.keys is not None
        if key_id in self.keys:
            return self.keys[key_id]
        # SECURITY: bounded, so reports naming made-up key ids cannot make us hammer the key server.
        if self.clock() - self.refetched_at >= self.min_refetch:
            self.refetched_at = self.clock()
            await self._refresh()  # a failure: 503 (GitHub may have rotated; it sends the report again)
        return self.keys.get(key_id)

    async def _refresh(self) -> None:
        """Fetch the keys, joining the fetch in flight; ScannerKeysUnavailable at once while the
        back-off after a failure lasts, or when MAX_WAITERS already wait."""
        if self._flight is None:
            if self.clock() - self.failed_at < self.backoff:
                raise self._unavailable()
            self._flight = asyncio.ensure_future(self._fetch())
            self._flight.add_done_callback(self._landed)
        if self._waiting >= MAX_WAITERS:
            raise errors.ScannerKeysUnavailable()
        self._waiting += 1
        try:
            await asyncio.shield(self._flight)  # a cancelled report does not cancel the others' fetch
        except errors.ScannerKeysUnavailable:
            raise self._unavailable() from None
        finally:
            self._waiting -= 1

    def _landed(self, flight: asyncio.Future) -> None:
        self._flight = None
        if not flight.cancelled():
            flight.exception()  # retrieved: a fetch nobody waits for any more must not warn

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self.fetches += 1
        try:
            async with self._session.get(self.url, headers={"Accept": "application/json"},
                                         allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                raw = await resp.content.read(MAX_KEYS_DOCUMENT + 1)
            if len(raw) > MAX_KEYS_DOCUMENT:
                raise ValueError("document too large")
            found = leaks.parse_public_keys(raw)
            if not found:
                raise ValueError("no P-256 public key in the document")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            self.failed_at = self.clock()
            if self.fetched is not None:
                self.fetched.labels("failed").inc()
            log.warning("secret scanning: the public keys cannot be fetched (%s); no fetch for %.0f s; keys held: %s",
                        err if isinstance(err, ValueError) else type(err).__name__, self.backoff,
                        "none" if self.keys is None else f"fetched {self.clock() - self.fetched_at:.0f} s ago")
            raise errors.ScannerKeysUnavailable() from err
        self.keys, self.fetched_at, self.failed_at = found, self.clock(), float("-inf")
        if self.fetched is not None:
            self.fetched.labels("ok").inc()


class Scanning:
    """The endpoint's state in the admin API: keys, rate limit, metrics."""

    def __init__(self, state, clock: Callable[[], float]) -> None:
        self.state = state  # the admin API's AdminState (store, guard, settings)
        settings = self.settings = state.settings
        self.keys = ScannerKeys(settings, clock, state.metrics.scanning_key_fetches)
        self.rate = FailureThrottle(limit=settings.secret_scanning_rate, window=RATE_WINDOW,
                                    max_clients=settings.throttle_max_clients, clock=clock,
                                    ipv6_prefix=settings.throttle_ipv6_prefix)
        m = state.metrics
        self.reports, self.tokens, self.actions = m.scanning_reports, m.scanning_tokens, m.scanning_actions

    def limit(self, client: str) -> None:
        """429 while ``client`` is over --secret-scanning-rate (refused reports count: refused())."""
        wait = self.rate.retry_after(client)
        if wait:
            raise errors.TooManyReports(self.settings.secret_scanning_rate, wait)

    def refused(self, client: str, err: errors.ApiError) -> None:
        """Count a report refused for what it is (a 4xx but the 429 itself) against ``client``.
        SECURITY: a verified report never counts: GitHub sends from few addresses, and a burst of
        real reports answered 429 would be dropped (a verified report is bounded by its size and
        token count instead). Our own 503s do not count either: GitHub sends those again."""
        if 400 <= err.status < 500 and err.status != 429:
            self.rate.record_failure(client)


SCANNING = web.AppKey("secret_scanning", Scanning)


async def github_report(request: web.Request) -> web.Response:
    """POST /v1/secret-scanning/github: a signed report -> the feedback array."""
    scan = request.app.get(SCANNING)
    if scan is None:
        raise errors.NotFound("Secret-scanning reports are not taken here (--secret-scanning-keys-url is empty).")
    client = scan.state.guard.client(request.remote or "", list(request.headers.items()))
    try:
        body = await receive(request, scan.state, scan, client)
    except errors.ApiError as err:
        scan.reports.labels(err.code).inc()
        scan.refused(client, err)
        raise
    except FAULTS:
        scan.reports.labels("store_unavailable").inc()
        raise
    scan.reports.labels("ok").inc()
    return web.Response(body=body, content_type="application/json")


def _one_header(request: web.Request, name: str) -> str:
    values = request.headers.getall(name, ())
    if not values:
        raise errors.MissingSignature()
    if len(values) > 1 or not values[0] or len(values[0]) > leaks.MAX_SIGNATURE_CHARS:
        raise errors.InvalidSignature()
    return values[0]


async def read_capped(request: web.Request, cap: int, timeout: float) -> bytes:
    """The body, never more than ``cap`` bytes read (413 past it, whatever Content-Length says)."""
    if request.content_length is not None and request.content_length > cap:
        raise errors.PayloadTooLarge(f"A report must be at most {cap} bytes.")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):  # SECURITY: slow bodies
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    raise errors.PayloadTooLarge(f"A report must be at most {cap} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise errors.RequestTimeout() from None
    except web.RequestPayloadError:
        raise errors.BadRequest("The request body could not be read (check Content-Encoding).") from None
    return b"".join(chunks)


async def receive(request: web.Request, st, scan: Scanning, client: str) -> bytes:
    """The verified report's feedback body (every refusal raises its ApiError)."""
    scan.limit(client)
    key_id = _one_header(request, KEY_ID_HEADER)
    signature = _one_header(request, SIGNATURE_HEADER)
    if request.content_type != "application/json" or (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
        raise errors.UnsupportedMediaType()
    body = await read_capped(request, leaks.MAX_REPORT_BYTES, st.settings.body_timeout)
    key = await scan.keys.key(key_id)
    # SECURITY: the signature is over these exact bytes, checked before anything reads them.
    if key is None or not leaks.signature_valid(key, signature, body):
        raise errors.InvalidSignature()
    try:
        entries = leaks.parse_report(body)
    except leaks.BadReport as err:
        raise errors.InvalidReport(str(err)) from None
    ours = await act_on(st, scan, entries)
    for entry in entries:
        scan.tokens.labels(leaks.TRUE_POSITIVE if entry.token in ours else leaks.FALSE_POSITIVE).inc()
    return leaks.feedback(entries, ours)


async def act_on(st, scan: Scanning, entries: list[leaks.ReportedToken]) -> set[str]:
    """Mark (and, by the org's leak_action, revoke) the live keys the report names; the tokens
    that are real keys of ours."""
    from admin_api.app import _revoke_descendants  # (app imports this module)
    from gateway.tasks import ACK_TIMEOUT

    now = st.now_ms()
    parsed: dict[str, tuple[keys.ParsedKey, leaks.ReportedToken]] = {}
    for entry in entries:
        if entry.token in parsed:
            continue  # reported twice: acted on once, labelled each time
        try:
            parsed[entry.token] = (keys.parse_key(entry.token), entry)
        except keys.InvalidKeyFormat:
            continue  # SECURITY: no Redis command for what cannot be a key
    if not parsed:
        return set()
    ids = list(dict.fromkeys(p.key_id for p, _ in parsed.values()))
    read = dict(zip(ids, await st.store.get_many(ids), strict=True))
    ours, found = set(), {}  # found: the key's own id -> the first entry naming one of its live secrets
    for token, (p, entry) in parsed.items():
        is_ours, live = leaks.reported_key(read[p.key_id], p.digest, now)
        if is_ours:
            ours.add(token)
        if live:
            found.setdefault(read[p.key_id].id, entry)
    if not found:
        return ours
    # A rolled key's older secret reads as its alias: the key's own record holds the mark.
    records = {kid: read[kid] for kid in found if kid in read and read[kid].alias_id is None}
    missing = [kid for kid in found if kid not in records]
    if missing:
        records |= {kid: r for kid, r in zip(missing, await st.store.get_many(missing), strict=True) if r is not None}
    orgs = sorted({r.org_id for r in records.values()})
    settings = dict(zip(orgs, await asyncio.gather(*(st.store.orgs.get(o) for o in orgs)), strict=True))
    marks = {kid: Leak(found[kid].url, found[kid].source, now, leaks.SCANNER, settings[r.org_id].leak_action)
             for kid, r in records.items()}
    outcomes = await st.store.leaks.mark(list(records.values()), marks, leaks.ACTOR)
    flagged = sum(1 for kid, o in outcomes.items() if o == "marked" and marks[kid].action != REVOKE)
    scan.actions.labels("flagged").inc(flagged)
    to_revoke = [r for kid, r in records.items()
                 if settings[r.org_id].leak_action == REVOKE and outcomes.get(kid) in ("marked", "marked_before")]
    gate = asyncio.Semaphore(REVOKE_CONCURRENCY)

    async def revoke(r: KeyRecord) -> None:
        async with gate:
            done = await st.store.revoke(org_id=r.org_id, key_id=r.id, actor=leaks.ACTOR, now_ms=now,
                                         ack_timeout=ACK_TIMEOUT)
        if done is not None and done.revoked_at == now and done.revoked_by == leaks.ACTOR:
            scan.actions.labels("revoked").inc()

    results = await asyncio.gather(*(revoke(r) for r in to_revoke), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result  # a 503: GitHub sends the report again; the marks made stay, revokes are idempotent
    # SECURITY: whoever held a leaked key may have made keys with it (api_keys:manage): they go
    # too, as a revoke with cascade does (each acknowledged; a key created meanwhile is refused by
    # its create's own check of its creator). One walk of each org for the whole report.
    for org_id in sorted({r.org_id for r in to_revoke}):
        children = await _revoke_descendants(st, org_id, {r.id for r in to_revoke if r.org_id == org_id},
                                             leaks.ACTOR, now)
        scan.actions.labels("revoked").inc(len(children))
    return ours
