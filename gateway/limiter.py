"""Per-key limits on one gateway process: the registry of KeyLimiters and its I/O (issue 16).

The accounting is gateway.leases (pure); this module asks the store for leases (one call in
flight per key), gives back what is idle every second and everything at shutdown, and answers
the reclaim broadcast of other nodes. The hot path (``Limiter.admit``'s ADMIT) does no I/O.
Windows are on Redis's clock: ``Limiter.now_ms`` is this node's clock plus the offset each lease
reply measures (docs/rate-limits.md, "Clocks").
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Sequence

from gateway import errors
from gateway.leases import ADMIT, NEEDS_LEASE, REFUSED, Decision, KeyLimiter, RateHeaders, Want, most_restrictive
from gateway.plans import NO_LIMITS, LimitsConfig, describe
from gateway.ratelimit import MONTH, Limit, policy_header, ratelimit_header, window_bounds
from gateway.store import Unavailable
from gateway.store.limits import BudgetStore, parse_reclaim

log = logging.getLogger("gateway")

MAX_KEYS = 65536  # KeyLimiters one process keeps; the least recently used are dropped first
EVICT_AFTER_MS = 150_000  # a key holding no budget and unused this long is dropped (> Sizing.max_idle_ms)
FAULT_BACKOFF = 1.0  # seconds after a key's lease failed (Redis down) in which no other lease of it is tried
MAX_PENDING = 65536  # returns kept for the next tick (dropped entries' budget, returns deferred by a fault)
RECLAIM_WAIT = 0.15  # seconds a short request waits at most for other nodes to return budget (woken once enough came)
FRUITLESS_WAIT = 0.03  # ...after the key's last reclaim brought nothing back (a flood: nobody holds any)
ROUNDS = 8  # lease-then-admit rounds of one request before it is refused
RETURN_EVERY = 1.0  # seconds between returns of idle budget
SHUTDOWN_RETURN_DEADLINE = 2.0  # seconds

RATE, QUOTA = "rate", "quota"


class LimiterStats:
    """Plain counters, read at scrape time (gateway.metrics.LimiterCollector)."""

    def __init__(self) -> None:
        self.admitted = {RATE: 0, QUOTA: 0}
        self.fast_admits = [0, 0, 0]  # admitted by the hot path, by Entry.kinds_index (folded in at scrape time)
        self.refused: dict[tuple[str, str], int] = {}  # (kind, code) -> count
        self.leases = self.leased_units = self.returns = self.returned_units = 0
        self.reclaims_sent = self.reclaims_received = 0
        self.commands = {"lease": 0, "return": 0, "publish": 0}

    def admitted_total(self) -> dict[str, int]:
        """``admitted`` with the hot path's counts folded in (what the metric shows)."""
        rate_only, quota_only, both = self.fast_admits
        return {RATE: self.admitted[RATE] + rate_only + both, QUOTA: self.admitted[QUOTA] + quota_only + both}

    def refuse(self, limit: Limit, code: str) -> None:
        key = (QUOTA if limit.is_quota else RATE, code)
        self.refused[key] = self.refused.get(key, 0) + 1


class Entry:
    """One key's limiter on this node, memoized by the record it was built from.

    The fast path: after an admit through the leases (``KeyLimiter.admit``), the entry is armed
    with one flat budget (``KeyLimiter.fast_budget``: the least any lease holds, until a lease's
    window or the second ends), and the key's next requests are admitted from it by ``Limiter.admit``
    (a compare and four counters), their RateLimit lines from two memoized byte strings. What it
    admitted is settled into the leases (``KeyLimiter.spend``) before anything else reads or
    changes them: ``limiter`` settles and disarms (the next admit goes through the leases and arms
    again), and so does every path but the fast one.
    """

    __slots__ = ("key_id", "record", "limits", "_limiter", "by_window", "kinds", "flight", "woken",
                 "reclaimed", "last_seen", "waiting", "policy", "policy_until", "fault_until", "rate_lines",
                 "kinds_index", "fruitless", "need", "back", "budget", "until", "spent", "admits", "last_at",
                 "r_head", "r_left", "r_suffix", "r_until", "counts")

    def __init__(self, key_id: str, record, limits: tuple[Limit, ...], now: int,
                 counts: list[int] | None = None) -> None:
        self.key_id = key_id
        self.record = record
        self.limits = limits
        self._limiter = KeyLimiter(limits, now) if limits else None
        # The fast path (see the class): admit from ``budget`` while now < ``until``; ``spent``
        # units by ``admits`` requests (the last at ``last_at``) are not yet in the leases.
        self.budget = self.until = self.spent = self.admits = self.last_at = 0
        # RateLimit lines while armed: r_head + (r_left - spent) + r_suffix, valid while r_until == until.
        self.r_head = self.r_suffix = b""
        self.r_left = 0
        self.r_until = -1
        self.counts = counts if counts is not None else [0, 0, 0]  # LimiterStats.fast_admits
        self.by_window = {limit.window: limit for limit in limits}
        self.kinds = tuple(k for k in (RATE, QUOTA) if any((lim.is_quota) == (k == QUOTA) for lim in limits))
        self.kinds_index = {(RATE,): 0, (QUOTA,): 1}.get(self.kinds, 2)  # LimiterStats.fast_admits
        self.flight: asyncio.Future | None = None  # the lease in flight
        self.woken: asyncio.Event | None = None  # set when another node returned budget of this key
        self.fruitless = False  # the last reclaim's wait ended with no return
        self.need = 0  # units the requests waiting on a reclaim lack
        self.back = 0  # units other nodes said they returned since that reclaim
        self.reclaimed: dict[str, tuple[int, int]] = {}  # window -> (start, when) of the last reclaim sent
        self.last_seen = now
        self.waiting = 0  # requests of this key in ``Limiter.settle`` now
        self.policy = ""  # RateLimit-Policy, the same until a month ends (its w is the month's length)
        self.policy_until = -1
        self.fault_until = 0.0  # monotonic: this key's leases fail fast until then (the policy answers)
        self.rate_lines = RateHeaders(limits)  # the same headers as bytes, for the proxy's answers

    @property
    def limiter(self) -> KeyLimiter | None:
        """The key's leases, with what the fast path admitted settled into them; disarms the
        fast path (the caller may change the leases: the next admit arms it again)."""
        if self.admits:
            self.settle()
        self.disarm()
        return self._limiter

    def disarm(self) -> None:
        self.budget = self.until = 0
        self.r_until = -1

    def settle(self) -> None:
        """Spend what the fast path admitted from the leases (and count it), leaving it armed."""
        admits, spent = self.admits, self.spent
        if not admits:
            return
        self.admits = self.spent = 0
        self.r_left -= spent
        self._limiter.spend(spent, admits, self.last_at)
        self.last_seen = self.last_at
        self.counts[self.kinds_index] += admits

    def arm(self, now: int) -> None:
        """After an admit through the leases: the flat budget the next requests spend."""
        self.budget, self.until = self._limiter.fast_budget(now)
        self.r_until = -1

    def header_bytes(self, now: int) -> bytes:
        """``headers(now)`` as the response head's lines (the proxy's hot path): while armed,
        from the parts memoized at the first answer of the armed second (every admit since
        lowered r by its cost; nothing else changed the leases)."""
        if now < self.until:
            if self.r_until == self.until:
                return self.r_head + b"%d" % (self.r_left - self.spent) + self.r_suffix
            self.settle()
            head, left, suffix = self.rate_lines.parts(self._limiter.leases, now)
            self.r_head, self.r_left, self.r_suffix, self.r_until = head, left, suffix, self.until
            return head + b"%d" % left + suffix
        return self.rate_lines.render(self.limiter.leases, now)

    def headers(self, now: int) -> dict[str, str]:
        """RateLimit-Policy and RateLimit of an answer (``KeyLimiter.headers``, the policy
        memoized: built once per key and month, not per request)."""
        if now >= self.policy_until:
            self.policy = policy_header(self.limits, now)
            self.policy_until = window_bounds(MONTH, now)[1] if MONTH in self.by_window else 2**62
        leases = self.limiter.leases
        tight = leases[0] if len(leases) == 1 else most_restrictive(leases, now)
        return {"RateLimit-Policy": self.policy,
                "RateLimit": ratelimit_header(tight.limit, tight.remaining(now), tight.end, now)}


class Limiter:
    """The registry key id -> Entry, and the lease, return and reclaim traffic of this node."""

    def __init__(self, store: BudgetStore, config: LimitsConfig = NO_LIMITS,
                 clock: Callable[[], float] = time.time, *, returns: BudgetStore | None = None,
                 redis_clock: bool | None = None) -> None:
        """``store``: leases and reclaims (the hot path's client); ``returns``: the returns, on
        a client of their own (the background one) so a tick of many keys cannot take the
        connections requests need. ``redis_clock`` (default: when ``clock`` is the real one):
        windows follow Redis's clock, and the store refuses a window that does not hold it; an
        injected test clock is taken as it is."""
        self.store = store
        self.returns = returns or store
        self.config = config
        self.clock = clock
        self.redis_clock = clock is time.time if redis_clock is None else redis_clock
        self.offset_ms = 0  # Redis's clock minus this node's, as the last lease replies bound it
        self._last_ms = 0
        self.stats = LimiterStats()
        self._fast_admits = self.stats.fast_admits  # (admit's counter, one attribute away)
        self.entries: dict[str, Entry] = {}
        self.pending: list[tuple[str, list[Want]]] = []  # budget to return at the next tick
        self._tasks: set[asyncio.Task] = set()
        self._warned_at = float("-inf")
        # Nothing can be limited without a default, a ceiling or a record's own limits.
        self._any_default = bool(config.default or config.ceilings)

    def now_ms(self) -> int:
        """The limiter's clock (ms): this node's plus the offset to Redis's; never goes back (a
        lease rolled into a window must not roll back into the one before and drop its budget)."""
        now = int(self.clock() * 1000) + self.offset_ms
        if now < self._last_ms:
            return self._last_ms
        self._last_ms = now
        return now

    def _measured(self, redis_now: int, sent: float, answered: float) -> None:
        """Redis's clock read ``redis_now`` between ``sent`` and ``answered`` (this node's clock,
        s): keep the offset if it fits in that interval, else move it to the nearest bound."""
        low, high = redis_now - int(answered * 1000), redis_now - int(sent * 1000)
        offset = min(max(self.offset_ms, low), high)
        if offset < self.offset_ms:
            self._last_ms = 0  # a correction (not jitter): the clock may go back to Redis's
        self.offset_ms = offset

    # -- the hot path ---------------------------------------------------------------------
    def entry(self, record, now: int | None = None) -> Entry | None:
        """The key's entry when it is limited (None: unlimited). Free when the record is the
        one the entry was built from (the verdict cache hands out the same object), and for an
        unlimited key without a default (the clock is read only when an entry is built)."""
        found = self.entries.get(record.id)
        if found is not None and found.record is record:
            return found if found._limiter is not None else None
        own = record.limits
        if own is None and not self._any_default and found is None:
            return None
        if now is None:
            now = self.now_ms()
        limits = self.config.effective(own)
        if found is not None:
            if found.limits == limits:
                found.record = record
                return found if found._limiter is not None else None
            self._drop(found, now)  # changed limits: its budget goes back, a new limiter starts
        elif not limits:
            return None
        if len(self.entries) >= MAX_KEYS:
            self._evict(now)
        made = self.entries[record.id] = Entry(record.id, record, limits, now, self._fast_admits)
        return made if made._limiter is not None else None

    def admit(self, entry: Entry, cost: int, now: int) -> Decision:
        """The synchronous decision (no I/O); NEEDS_LEASE and REFUSED go to ``settle``. First
        from the entry's flat budget (Entry: the fast path), else through the leases."""
        if entry.budget >= cost and now < entry.until:
            entry.budget -= cost
            entry.spent += cost
            entry.admits += 1
            entry.last_at = now
            return ADMIT
        limiter = entry.limiter  # (settled, disarmed)
        decision = limiter.admit(cost, now)
        if decision is ADMIT:
            self._fast_admits[entry.kinds_index] += 1  # (one list slot, not a dict entry per kind)
            entry.last_seen = now
            entry.arm(now)
        return decision

    def settle_all(self) -> None:
        """Settle every entry's fast admits into its leases and counters (at scrape time)."""
        for entry in self.entries.values():
            if entry.admits:
                entry.settle()

    async def settle(self, entry: Entry, decision: Decision, cost: int) -> None:
        """Lease and admit again (bounded), or raise the refusal: 429 rate_limited /
        quota_exceeded, or under a store fault the closed policy's 503."""
        entry.waiting += 1
        try:
            await self._settle(entry, decision, cost)
        finally:
            entry.waiting -= 1
            if not entry.waiting and entry.limiter is not None and self.entries.get(entry.key_id) is not entry:
                # Dropped (limits edited, evicted) while this waited on a lease: what the lease
                # brought and the requests waiting on it did not spend goes back.
                self._defer(entry.key_id, entry.limiter.release(self.now_ms(), everything=True))

    async def _settle(self, entry: Entry, decision: Decision, cost: int) -> None:
        limiter = entry.limiter
        for _ in range(ROUNDS):
            if decision.outcome == REFUSED:
                if entry.woken is not None:  # a reclaim is under way: its returns may cover this
                    await self._wait_returns(entry)
                    decision = self.admit(entry, cost, self.now_ms())
                    if decision.outcome != REFUSED:
                        continue
                raise self._refusal(entry, decision, cost)
            if decision.outcome != NEEDS_LEASE:
                return
            if time.monotonic() < entry.fault_until:
                return self._on_fault(entry, decision, cost)
            try:
                await self._lease(entry, decision.wants, cost)
            except Unavailable as exc:
                # Only this key backs off (other keys' leases may be in other slots, on other
                # nodes), and only for an outage: a full pool or an error about this call alone
                # answers this request by the policy and lets the next one try again.
                if exc.outage:
                    entry.fault_until = time.monotonic() + FAULT_BACKOFF
                else:
                    log.warning("rate-limit lease failed (not an outage): %s", exc)
                return self._on_fault(entry, decision, cost)
            decision = self.admit(entry, cost, self.now_ms())
        if decision.outcome == ADMIT.outcome:
            return
        if decision.outcome == NEEDS_LEASE:  # leases kept falling short: refused by the first of them
            decision = limiter.lease(decision.wants[0].window).refusal(self.now_ms())
        raise self._refusal(entry, decision, cost)

    def _refusal(self, entry: Entry, decision: Decision, cost: int) -> errors.ApiError:
        limit = entry.by_window[decision.window]
        self.stats.refuse(limit, decision.code)
        now = self.now_ms()
        if cost > limit.limit:  # never admitted, whatever the wait: say so
            cls = errors.CostOverQuota if limit.is_quota else errors.CostOverRate
        else:
            cls = errors.QuotaExceeded if limit.is_quota else errors.RateLimited
        return cls(limit.window, limit.limit, decision.retry_after, entry.limiter.headers(now, decision))

    def _on_fault(self, entry: Entry, decision: Decision, cost: int) -> None:
        now = self.now_ms()
        if entry.limiter.admit_on_fault(decision, cost, now, self.config.faults):
            for kind in entry.kinds:
                self.stats.admitted[kind] += 1
            return
        closed = next(entry.by_window[w.window] for w in decision.wants
                      if not self.config.faults.opens(entry.by_window[w.window]))
        code = self.config.faults.code(closed)
        self.stats.refuse(closed, code)
        cls = errors.QuotaUnavailable if closed.is_quota else errors.RateLimitUnavailable
        raise cls(closed.window, closed.limit, entry.headers(now))

    # -- leases ---------------------------------------------------------------------------
    async def _lease(self, entry: Entry, wants: Sequence[Want], cost: int) -> None:
        """One lease call in flight per key: concurrent requests of the key wait on it."""
        flight = entry.flight
        if flight is None:
            # Enough for every request of the key waiting now (a burst on a cold key), not only this one.
            wants = [w._replace(amount=max(w.amount, entry.waiting * cost)) for w in wants]
            flight = entry.flight = asyncio.ensure_future(self._lease_now(entry, wants, cost))
            flight.add_done_callback(lambda _: setattr(entry, "flight", None) if entry.flight is flight else None)
        # Shielded: a cancelled request must not cancel the lease the others wait for.
        await asyncio.shield(flight)

    async def _lease_now(self, entry: Entry, wants: Sequence[Want], cost: int) -> None:
        self.stats.commands["lease"] += 1
        sent = self.clock()
        reply = await self.store.lease(entry.key_id, wants, entry.by_window, check=self.redis_clock)
        if self.redis_clock:
            self._measured(reply.now, sent, self.clock())
        now = self.now_ms()
        short: list[Want] = []
        for want, grant in zip(wants, reply.grants, strict=True):
            if grant.left < 0:  # a window that does not hold Redis's clock: nothing granted
                continue  # (the offset is now right: the caller's next round leases the current one)
            self.stats.leases += 1
            self.stats.leased_units += grant.amount
            if not entry.limiter.grant(grant.window, grant.start, grant.amount, grant.left, now, grant.rates, want.rate):
                if grant.amount:
                    self._defer(entry.key_id, [Want(grant.window, grant.start, grant.amount)])
                continue
            lease = entry.limiter.lease(grant.window)
            if grant.amount < want.amount and lease.held < cost:
                short.append((want, max(cost, entry.waiting * cost) - lease.held))
        for want, need in short:
            await self._reclaim(entry, want, need, now)

    async def _reclaim(self, entry: Entry, want: Want, need: int, now: int) -> None:
        """The store had too little left: ask the other nodes for what they hold of this key (at
        most once a recheck period per window, counted from the end of the last wait: one wait
        per request, and again in the same window once that passed), then wait for their returns
        (woken once they add up to ``need``, what the waiting requests lack; at most RECLAIM_WAIT)."""
        last = entry.reclaimed.get(want.window)
        if last is not None and last[0] == want.start and now - last[1] < entry.limiter.sizing.recheck_ms:
            return
        entry.reclaimed[want.window] = (want.start, now)
        entry.woken = asyncio.Event()
        entry.need, entry.back = need, 0
        self.stats.reclaims_sent += 1
        self.stats.commands["publish"] += 1
        try:
            await self.store.reclaim(entry.key_id, want.window, want.start)
        except Unavailable:
            entry.woken = None
            return
        await self._wait_returns(entry)
        entry.reclaimed[want.window] = (want.start, self.now_ms())

    async def _wait_returns(self, entry: Entry) -> None:
        woken = entry.woken
        if woken is None:
            return
        try:
            await asyncio.wait_for(woken.wait(), FRUITLESS_WAIT if entry.fruitless else RECLAIM_WAIT)
        except asyncio.TimeoutError:
            pass
        entry.fruitless = not woken.is_set() and not entry.back
        if entry.woken is woken:
            entry.woken = None

    def on_reclaim(self, data: str) -> None:
        """A message of the reclaim channel (gateway.tasks' subscription): another node asks for
        budget of a key (return what this node holds of it), or says it returned some (ask the
        store again at the next shortfall)."""
        parsed = parse_reclaim(data)
        if parsed is None:
            return
        key_id, window, start, node, returned = parsed
        entry = self.entries.get(key_id)
        if entry is None or entry.limiter is None or window not in entry.by_window:
            return
        self.stats.reclaims_received += 1
        lease = entry.limiter.lease(window)
        if returned is not None:
            if lease.start == start and node != self.store.node:
                lease.allow_recheck()
                entry.back += returned
                if entry.woken is not None and entry.back >= entry.need:
                    entry.woken.set()
            return
        if node == self.store.node:  # our own request, heard back
            return
        wants = entry.limiter.release(self.now_ms(), everything=True)
        if wants:
            self._spawn(self._return_reclaimed(key_id, wants, window, start))

    async def _return_reclaimed(self, key_id: str, wants: list[Want], window: str, start: int) -> None:
        # (no PING first: the reclaim just came through Redis, and the asker waits at most RECLAIM_WAIT)
        if await self._give_back([(key_id, wants)], keep=False):
            self.stats.commands["publish"] += 1
            returned = sum(w.amount for w in wants if w.window == window and w.start == start)
            try:
                await self.returns.reclaim(key_id, window, start, returned=returned)
            except Unavailable:
                pass

    # -- returns --------------------------------------------------------------------------
    async def _give_back(self, returns: list[tuple[str, list[Want]]], *, keep: bool = True) -> bool:
        """Return budget released from the leases. ``keep``: while Redis does not answer
        (checked first: one PING), nothing is sent and the budget goes back into the leases it
        came from: the node keeps admitting within what it leased through an outage."""
        returns = [(key_id, wants) for key_id, wants in returns if wants]
        if not returns:
            return True
        if keep and not await self.returns.ping():
            self._restore(returns)
            return False
        try:
            calls = await self.returns.give_back(returns)
        except Unavailable as exc:
            # Sent, maybe landed: lost (under-admission for the rest of those windows, never over).
            self._warn("could not return unused rate-limit budget of %d keys: %s", len(returns), exc)
            return False
        self.stats.commands["return"] += calls
        self.stats.returns += sum(len(wants) for _, wants in returns)
        self.stats.returned_units += sum(w.amount for _, wants in returns for w in wants)
        return True

    def due_returns(self, now: int, *, everything: bool = False) -> list[tuple[str, list[Want]]]:
        """What goes back now (idle and over-sized leases, or ``everything``), and drops the keys
        that hold nothing and have not been used for EVICT_AFTER_MS."""
        out, self.pending = self.pending, []
        for key_id, entry in list(self.entries.items()):
            limiter = entry._limiter
            if limiter is None:
                if now - entry.last_seen >= EVICT_AFTER_MS:
                    del self.entries[key_id]
                continue
            entry.settle()  # (armed still: release changes the leases only when it returns budget)
            wants = limiter.release(now, everything=everything)
            if wants:
                entry.disarm()
                out.append((key_id, wants))
            elif now - entry.last_seen >= EVICT_AFTER_MS and entry.flight is None \
                    and all(lease.held == 0 for lease in limiter.leases):
                del self.entries[key_id]
        return out

    async def return_idle(self, *, everything: bool = False) -> None:
        """Give back what is due (``everything``: at shutdown, straight away, no PING first)."""
        await self._give_back(self.due_returns(self.now_ms(), everything=everything), keep=not everything)

    async def run(self, interval: float = RETURN_EVERY) -> None:
        """Every ``interval`` seconds, return the budget this node holds and does not need. A
        failure of one tick is logged and the next tick runs (a dead loop would hold every idle
        lease until the windows end)."""
        announced = False
        while True:
            if not announced:  # for the admin API's check (admin_api.app.check_limits_config)
                try:
                    await self.returns.announce(describe(self.config))
                    announced = True
                except Unavailable:
                    pass
            await asyncio.sleep(interval)
            try:
                await self.return_idle()
            except Exception:
                log.exception("rate-limit return tick failed")

    def _restore(self, returns: list[tuple[str, list[Want]]]) -> None:
        """Budget that was not sent goes back into its leases (or, for a dropped key, stays
        pending for the next tick, while its window lasts)."""
        now = self.now_ms()
        for key_id, wants in returns:
            entry = self.entries.get(key_id)
            if entry is not None and entry.limiter is not None:
                wants = entry.limiter.restore(wants, now)
            self._defer(key_id, [w for w in wants if window_bounds(w.window, w.start)[1] > now])

    def _defer(self, key_id: str, wants: list[Want]) -> None:
        if wants and len(self.pending) < MAX_PENDING:  # past it: lost, under-admission only
            self.pending.append((key_id, wants))

    def _warn(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 10.0:  # at most one line per 10 s through an outage
            self._warned_at = now
            log.warning(message, *args)

    async def close(self) -> None:
        """At shutdown (requests finished): everything held goes back, within a deadline."""
        for task in list(self._tasks):
            task.cancel()
        try:
            await asyncio.wait_for(self.return_idle(everything=True), SHUTDOWN_RETURN_DEADLINE)
        except asyncio.TimeoutError:
            log.error("rate-limit budget not returned within %ss (lost until the windows end)",
                      SHUTDOWN_RETURN_DEADLINE)

    def _drop(self, entry: Entry, now: int) -> None:
        if entry.limiter is not None:
            self._defer(entry.key_id, entry.limiter.release(now, everything=True))
        del self.entries[entry.key_id]

    def _evict(self, now: int) -> None:
        """Make room: the least recently used sixteenth, their budget returned at the next tick
        (a sort once per MAX_KEYS // 16 new keys)."""
        self.settle_all()  # (last_seen of the fast path's admits)
        idle = sorted(self.entries.values(), key=lambda e: e.last_seen)[: max(1, MAX_KEYS // 16)]
        for entry in idle:
            self._drop(entry, now)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
