"""Per-key limit enforcement on one node: lease accounting, lease sizing and returns (pure; the
clock is injected as integer ms). The limits themselves are ``gateway.ratelimit``.

The budget of one (key, window) lives in the store; a node admits only from budget it has leased
(``Lease.held``), so what all nodes admit in a window never exceeds what the store granted, which
never exceeds the limit. A refused request changes no counter (Tyk #1876).
"""

from __future__ import annotations

import math
from typing import Annotated, NamedTuple, Sequence

import msgspec
from msgspec import Meta

from gateway.ratelimit import MONTH, FaultPolicy, Limit, policy_header, ratelimit_header, seconds_until, window_bounds

ADMITTED, NEEDS_LEASE, REFUSED = "admitted", "needs_lease", "refused"

# --- decisions and sizing --------------------------------------------------------------------

class Want(NamedTuple):
    """A lease to ask the store for: ``amount`` units of ``window`` starting at ``start``
    (also what goes back to it). ``rate``: this node's use of the key, milli-units a second,
    which the store keeps so that every node's lease is sized by its share of the key's whole
    traffic (0: none known yet); ``stale_ms``: how long the store counts that rate."""

    window: str
    start: int
    amount: int
    rate: int = 0
    stale_ms: int = 0


class Decision(NamedTuple):
    outcome: str  # ADMITTED, NEEDS_LEASE or REFUSED
    window: str | None = None  # REFUSED: the limit that refused (the longest wait)
    code: str | None = None  # REFUSED: rate_limited or quota_exceeded
    retry_after: int = 0  # REFUSED: seconds, at least 1
    wants: tuple[Want, ...] = ()  # NEEDS_LEASE: what to lease, then call admit again


ADMIT = Decision(ADMITTED)


class Sizing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How big a lease is and when it goes back."""

    horizon_ms: Annotated[int, Meta(description="a lease covers at most this much of the node's own traffic (ms)")] = 600_000
    headroom: Annotated[float, Meta(description="a lease is this many times the recent rate, for growth")] = 1.25
    share: Annotated[int, Meta(description="take at most 1/share of what the store has left")] = 2
    idle_ms: Annotated[int, Meta(description="no admit for this long (or 4 usual gaps): return the whole lease (ms)")] = 5_000
    max_idle_ms: Annotated[int, Meta(description="...but at most this long, however sparse the key (ms)")] = 120_000
    min_return_ms: Annotated[int, Meta(description="budget of a window ending sooner is never returned (ms)")] = 1_000
    recheck_ms: Annotated[int, Meta(description="after the store had too little, refuse without asking (ms)")] = 100
    contended_ms: Annotated[int, Meta(description="once the node expects to use all the store has left, a lease covers only this much of its traffic (ms)")] = 150

    def __post_init__(self) -> None:
        if min(self.horizon_ms, self.share, self.idle_ms, self.max_idle_ms, self.recheck_ms, self.contended_ms) <= 0 \
                or self.headroom < 1:
            raise ValueError("horizon_ms, share, idle_ms, max_idle_ms, recheck_ms and contended_ms must be positive"
                             " and headroom >= 1")


DEFAULT_SIZING = Sizing()


class RateMeter:
    """The node's recent admitted rate for one key (units per second): an EWMA over 1 s buckets
    for dense traffic, and an EWMA of the gaps between admits for sparse traffic (a key used every
    few seconds has mostly empty buckets)."""

    __slots__ = ("alpha", "beta", "second", "count", "previous", "ewma", "last", "gap")

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.beta = 1 - alpha  # (add's weight of the past, computed once)
        self.second = None  # the bucket being filled (now // 1000)
        self.count = 0
        self.previous = 0  # the last full second's count
        self.ewma = 0.0
        self.last: int | None = None  # the last admit
        self.gap = 0.0  # EWMA of the ms between admits

    def _fold(self, now: int) -> None:
        second = now // 1000
        if self.second is None:
            self.second = second
        elif second > self.second:
            self.ewma = self.alpha * self.count + (1 - self.alpha) * self.ewma
            self.ewma *= (1 - self.alpha) ** (second - self.second - 1)  # the empty seconds between
            self.previous = self.count if second == self.second + 1 else 0
            self.second, self.count = second, 0

    def add(self, cost: int, now: int) -> None:
        if now // 1000 != self.second:  # (a new second: fold; per request only this test)
            self._fold(now)
        self.count += cost
        last = self.last
        if last is not None:  # (max(0, now - last) without the call: this runs on every admit)
            self.gap = self.alpha * (now - last if now > last else 0) / cost + self.beta * self.gap
        self.last = now

    def add_many(self, units: int, admits: int, last: int) -> None:
        """``add`` of ``admits`` admits of ``units`` in all, the last at ``last``, all in one
        second (gateway.limiter's fast path settles so): the count is exact; the gap EWMA takes
        them as evenly spaced since the previous admit (exact for one admit)."""
        if admits == 1:
            self.add(units, last)
            return
        if last // 1000 != self.second:
            self._fold(last)
        self.count += units
        previous = self.last
        if previous is not None:
            cost = units / admits
            gap = (last - previous if last > previous else 0) / admits / cost
            keep = self.beta ** admits  # an EWMA of one value over ``admits`` steps
            self.gap = keep * self.gap + (1 - keep) * gap
        self.last = last

    def rate(self, now: int) -> float:
        self._fold(now)
        if self.gap >= 1000 and self.last is not None:  # sparse: one unit per gap, slowing while none comes
            return max(self.ewma, float(self.count), 1000 / max(self.gap, now - self.last))
        # Dense: the highest of the average, the last second and this second's pace (once 100 ms
        # in): a rising rate is seen at once (fewer top-up leases); a falling one lets leases idle.
        elapsed = now % 1000
        pace = self.count * 1000 / elapsed if elapsed >= 100 else float(self.count)
        return max(self.ewma, float(self.previous), pace)

    def idle_after(self, sizing: Sizing) -> int:
        """How long without an admit means idle: ``idle_ms``, or several usual gaps of a sparse
        key (at most ``max_idle_ms``), so a key used every few seconds keeps its lease."""
        return int(max(sizing.idle_ms, min(sizing.max_idle_ms, 4 * self.gap)))


class Lease:
    """One node's budget for one (key, limit), in the current window only.

    ``granted`` is what the store gave this node in this window, ``held`` what of it is unused,
    ``admitted`` what this node let through; always admitted + held + returned == granted
    (``overdraft`` counts admits made without a lease under a fail-open store fault).
    """

    __slots__ = ("limit", "start", "end", "granted", "held", "admitted", "returned", "overdraft",
                 "store_remaining", "recheck_at", "last_admit", "rates", "rate_sent")

    def __init__(self, limit: Limit, now: int) -> None:
        self.limit = limit
        # The key's traffic on every node (milli-units a second, as the store last summed the
        # rates nodes sent with their leases; None: not known yet) and this node's part of that
        # sum: kept across windows (a rate outlives a window).
        self.rates: int | None = None
        self.rate_sent = 0
        self._new_window(now)

    def _new_window(self, now: int) -> None:
        # Budget held for a past window is dropped: it cannot buy anything now, and its store
        # entry expires with the window.
        self.start, self.end = window_bounds(self.limit.window, now)
        self.granted = self.held = self.admitted = self.returned = self.overdraft = 0
        self.store_remaining: int | None = None  # unleased budget the store last reported
        self.recheck_at = -1
        self.last_admit = now

    def roll(self, now: int) -> None:
        if not self.start <= now < self.end:
            self._new_window(now)

    def check(self, cost: int, now: int) -> str:
        """ADMITTED (the held budget covers ``cost``), NEEDS_LEASE or REFUSED; changes nothing
        but the window."""
        self.roll(now)
        if self.held >= cost:
            return ADMITTED
        if cost > self.limit.limit:
            return REFUSED
        short = cost - self.held
        if self.store_remaining is not None and self.store_remaining < short and now < self.recheck_at:
            return REFUSED
        return NEEDS_LEASE

    def take(self, cost: int, now: int) -> None:
        """Spend ``cost`` of the held budget (``check`` said ADMITTED)."""
        assert self.held >= cost
        self.held -= cost
        self.admitted += cost
        self.last_admit = now

    def overdraw(self, cost: int, now: int) -> None:
        """Admit without a lease (fail-open store fault): from what is held, the rest as overdraft."""
        self.roll(now)
        used = min(self.held, cost)
        self.held -= used
        self.admitted += used
        self.overdraft += cost - used
        self.last_admit = now

    def admit(self, cost: int, now: int, rate: float = 0.0, sizing: Sizing = DEFAULT_SIZING) -> Decision:
        """The decision for one request on this limit alone; an admit spends the held budget."""
        state = self.check(cost, now)
        if state == ADMITTED:
            self.take(cost, now)
            return ADMIT
        if state == REFUSED:
            return self.refusal(now)
        return Decision(NEEDS_LEASE, wants=(self.want(cost, now, rate, sizing),))

    def refusal(self, now: int) -> Decision:
        # The budget comes back when the window resets (or sooner if other nodes return theirs).
        return Decision(REFUSED, self.limit.window, self.limit.code, max(1, seconds_until(self.end, now)))

    def want(self, cost: int, now: int, rate: float, sizing: Sizing = DEFAULT_SIZING) -> Want:
        """The lease to ask for: the node's expected use over the horizon (at most the rest of
        the window) with headroom; the headroom only out of a fair share of what the store has
        left (a spiking node leaves budget for the others); once the node expects to use all that
        is left (contended), only ``contended_ms`` of its traffic, at most the fair share: the
        budget stays in the store, where any node takes it as it needs it, rather than held
        unspent by the first node to ask while another refuses; and, once the store has told the
        key's traffic on every node, at most this node's share of the window's limit (less what it
        took already) unless that is less than ``contended_ms`` of its traffic: near the limit, the
        nodes' first leases of a window add up to the limit and none runs short before the end;
        at least what ``cost`` lacks."""
        short = max(0, cost - self.held)
        left = self.limit.limit if self.store_remaining is None else self.store_remaining
        fair = -(-left // sizing.share)
        bare = self.expected(now, rate, sizing, headroom=1.0)
        contended = math.ceil(rate * sizing.contended_ms / 1000)
        if bare >= left:
            amount = min(fair, contended)
        else:
            amount = min(self.expected(now, rate, sizing), max(fair, bare), left)
            cap = self.share(rate)
            if cap is not None:
                amount = min(amount, max(cap, contended))
        return Want(self.limit.window, self.start, max(amount, short), math.ceil(rate * 1000),
                    min(self.end - self.start, sizing.horizon_ms) + sizing.idle_ms)

    def share(self, rate: float) -> int | None:
        """What is left of this node's share of the window's limit: the limit times its part of
        the key's traffic on every node (this node's part at ``rate`` now), less what it took in
        this window; None while the store has not told the key's traffic."""
        if self.rates is None or rate <= 0:
            return None
        mine = math.ceil(rate * 1000)
        total = max(mine, self.rates - self.rate_sent + mine)
        return self.limit.limit * mine // total - (self.granted - self.returned)

    def expected(self, now: int, rate: float, sizing: Sizing = DEFAULT_SIZING, headroom: float | None = None) -> int:
        """Units this node should use over the horizon (at most the rest of the window) at ``rate``,
        times the headroom (``sizing``'s unless given)."""
        horizon = min(self.end - now, sizing.horizon_ms)
        return math.ceil(rate * (sizing.headroom if headroom is None else headroom) * horizon / 1000)

    def grant(self, start: int, amount: int, store_remaining: int, now: int, sizing: Sizing = DEFAULT_SIZING,
              rates: int | None = None, sent: int = 0) -> bool:
        """The store granted ``amount`` for the window at ``start`` and has ``store_remaining``
        left; ``rates``: the key's traffic on every node it summed (milli-units a second), with
        ``sent`` this node's (the want's ``rate``). False (and nothing changes but ``rates``) for
        a window that is no longer current."""
        if rates is not None and rates >= 0:
            self.rates, self.rate_sent = rates, sent
        self.roll(now)
        if start != self.start or amount < 0 or store_remaining < 0:
            return False
        self.granted += amount
        self.held += amount
        self.store_remaining = store_remaining
        self.recheck_at = now + sizing.recheck_ms
        return True

    def allow_recheck(self) -> None:
        """Ask the store again at the next shortfall (after a reclaim freed budget elsewhere)."""
        self.recheck_at = -1

    def release(self, now: int, rate: float = 0.0, sizing: Sizing = DEFAULT_SIZING, *, everything: bool = False,
                idle_after: int | None = None) -> Want | None:
        """Budget to return to the store, already removed from ``held`` (a failed return loses
        it: under-admission, never over). All of it when idle or ``everything`` (a reclaim, even
        near the window's end); otherwise, in a window longer than the horizon, what exceeds twice
        the expected use, once that is at least half of what is held (the rate fell). Budget of a
        window ending within ``min_return_ms`` stays unless reclaimed."""
        self.roll(now)
        if self.held <= 0 or (not everything and self.end - now < sizing.min_return_ms):
            return None
        amount = self.held
        if not everything and now - self.last_admit < (sizing.idle_ms if idle_after is None else idle_after):
            if self.end - now <= sizing.horizon_ms:
                return None  # the lease was sized to the window's end: what is left shrinks by itself
            keep = 2 * self.expected(now, rate, sizing)
            amount = self.held - keep
            if amount <= 0 or 2 * amount < self.held:
                return None
        self.held -= amount
        self.returned += amount
        self.recheck_at = -1  # the store has this back: the next shortfall asks it, not refuses
        return Want(self.limit.window, self.start, amount)

    def restore(self, start: int, amount: int, now: int) -> bool:
        """Take back budget ``release`` handed out that never reached the store (it was not
        sent: the store was down), so the node keeps admitting within what it leased. False (and
        nothing changes) once the window is over or for another window."""
        self.roll(now)
        if start != self.start or amount <= 0 or amount > self.returned:
            return False
        self.held += amount
        self.returned -= amount
        return True

    def remaining(self, now: int) -> int:
        """What this key may still spend in the window, as this node knows it: the unleased
        budget the store last reported plus what this node holds (other nodes' leases unseen)."""
        self.roll(now)
        if self.store_remaining is None:
            return max(0, self.limit.limit - self.admitted - self.overdraft)
        return self.store_remaining + self.held


# --- one key's limits together ---------------------------------------------------------------

class KeyLimiter:
    """All limits of one key on one node. A request passes every limit or changes nothing."""

    __slots__ = ("leases", "meter", "sizing", "first", "second", "more")

    def __init__(self, limits: Sequence[Limit], now: int, sizing: Sizing = DEFAULT_SIZING) -> None:
        windows = [limit.window for limit in limits]
        if len(set(windows)) != len(windows):
            raise ValueError(f"one limit per window: {', '.join(windows)}")
        if not limits:
            raise ValueError("at least one limit")
        self.leases = tuple(Lease(limit, now) for limit in limits)
        # admit()'s fast path reads the first two leases by name (most keys have one or two limits).
        self.first = self.leases[0]
        self.second = self.leases[1] if len(self.leases) > 1 else None
        self.more = self.leases[2:] or None
        self.meter = RateMeter()
        self.sizing = sizing

    def lease(self, window: str) -> Lease:
        for lease in self.leases:
            if lease.limit.window == window:
                return lease
        raise KeyError(window)

    def admit(self, cost: int, now: int) -> Decision:
        """ADMIT (every held budget spent by ``cost``), NEEDS_LEASE (lease ``wants``, ``grant``
        them, call again) or REFUSED (the longest wait of the refusing limits). Only an admit
        changes the counters."""
        if cost.__class__ is not int or cost < 1:  # (one test: a bool's class is bool)
            raise ValueError(f"cost must be a positive integer, not {cost!r}")
        # The common case first, as check() would decide it: every lease is of the current window
        # and holds enough (no list, no second pass, take() inlined: this runs on every request of
        # a limited key; one or two limits without a loop).
        first, second = self.first, self.second
        if first.held >= cost and first.start <= now < first.end:
            if second is None:
                first.held -= cost
                first.admitted += cost
                first.last_admit = now
                self.meter.add(cost, now)
                return ADMIT
            if second.held >= cost and second.start <= now < second.end:
                if self.more is None:
                    first.held -= cost
                    first.admitted += cost
                    first.last_admit = now
                    second.held -= cost
                    second.admitted += cost
                    second.last_admit = now
                    self.meter.add(cost, now)
                    return ADMIT
                return self._admit_all(cost, now)
        return self._admit_slow(cost, now)

    def spend(self, units: int, admits: int, last: int) -> None:
        """Settle what was admitted outside ``admit`` (gateway.limiter's fast path, from
        ``fast_budget``): ``admits`` requests of ``units`` in all, the last at ``last``, in the
        current window of every lease and within one second of the meter."""
        for lease in self.leases:
            assert lease.held >= units and lease.start <= last < lease.end
            lease.held -= units
            lease.admitted += units
            lease.last_admit = last
        self.meter.add_many(units, admits, last)

    def fast_budget(self, now: int) -> tuple[int, int]:
        """What may be admitted without ``admit`` (units, and until when: ms): the least held
        budget of the leases, until the first of them ends or the second ends (the meter's
        bucket, the RateLimit header's ``t``); (0, 0) when a lease is not of the current window."""
        budget, until = -1, now - now % 1000 + 1000
        for lease in self.leases:
            if not lease.start <= now < lease.end:
                return 0, 0
            if budget < 0 or lease.held < budget:
                budget = lease.held
            if lease.end < until:
                until = lease.end
        return budget, until

    def _admit_all(self, cost: int, now: int) -> Decision:
        """``admit`` of a key with three limits or more."""
        leases = self.leases
        for lease in leases:
            if lease.held < cost or not lease.start <= now < lease.end:
                return self._admit_slow(cost, now)
        for lease in leases:
            lease.held -= cost
            lease.admitted += cost
            lease.last_admit = now
        self.meter.add(cost, now)
        return ADMIT

    def _admit_slow(self, cost: int, now: int) -> Decision:
        """``admit`` when some lease lacks budget or is of a past window (check() decides each)."""
        states = [lease.check(cost, now) for lease in self.leases]
        if REFUSED in states:
            refusals = [lease.refusal(now) for lease, s in zip(self.leases, states, strict=True) if s == REFUSED]
            return max(refusals, key=lambda d: (d.retry_after, d.code == "quota_exceeded"))
        if NEEDS_LEASE in states:
            rate = self.meter.rate(now)
            return Decision(NEEDS_LEASE, wants=tuple(
                lease.want(cost, now, rate, self.sizing) for lease, s in zip(self.leases, states, strict=True) if s == NEEDS_LEASE))
        for lease in self.leases:
            lease.take(cost, now)
        self.meter.add(cost, now)
        return ADMIT

    def grant(self, window: str, start: int, amount: int, store_remaining: int, now: int,
              rates: int | None = None, sent: int = 0) -> bool:
        return self.lease(window).grant(start, amount, store_remaining, now, self.sizing, rates, sent)

    def admit_on_fault(self, decision: Decision, cost: int, now: int, policy: FaultPolicy) -> bool:
        """The store could not answer ``decision``'s leases: admit (overdrawing) if the policy of
        every limit that lacks budget is open; False means answer 503 ``policy.code(...)``."""
        if not all(policy.opens(self.lease(want.window).limit) for want in decision.wants):
            return False
        for lease in self.leases:
            lease.overdraw(cost, now)
        self.meter.add(cost, now)
        return True

    def release(self, now: int, *, everything: bool = False) -> list[Want]:
        """Budget to return to the store now (idle, over-sized, or ``everything`` for a reclaim)."""
        rate, idle_after = self.meter.rate(now), self.meter.idle_after(self.sizing)
        returns = (lease.release(now, rate, self.sizing, everything=everything, idle_after=idle_after)
                   for lease in self.leases)
        return [want for want in returns if want is not None]

    def restore(self, wants: Sequence[Want], now: int) -> list[Want]:
        """``Lease.restore`` each of ``wants``; the ones that could not be (windows over)."""
        return [want for want in wants if not self.lease(want.window).restore(want.start, want.amount, now)]

    def headers(self, now: int, refused: Decision | None = None) -> dict[str, str]:
        """RateLimit-Policy (every limit), RateLimit (the most restrictive one; for a refusal the
        refusing one, so Retry-After, added then, is the end of its effective window as the draft asks)."""
        refusing = refused is not None and refused.outcome == REFUSED
        tight = self.lease(refused.window) if refusing else most_restrictive(self.leases, now)
        out = {"RateLimit-Policy": policy_header([lease.limit for lease in self.leases], now),
               "RateLimit": ratelimit_header(tight.limit, tight.remaining(now), tight.end, now)}
        if refusing:
            out["Retry-After"] = str(max(1, refused.retry_after))
        return out


def most_restrictive(leases: Sequence[Lease], now: int) -> Lease:
    """The lease with the least remaining; of equals, the one that resets last (of full ties the
    first). A loop, not ``min(key=...)``: no tuple per lease on every answer of a limited key."""
    return _tightest(leases, now)[0]


def _tightest(leases: Sequence[Lease], now: int) -> tuple[Lease, int]:
    """``most_restrictive`` and its remaining (``Lease.remaining`` inlined: every answer of a
    limited key asks this)."""
    best, least = None, 0
    for lease in leases:
        if not lease.start <= now < lease.end:
            lease.roll(now)
        held_elsewhere = lease.store_remaining
        left = (max(0, lease.limit.limit - lease.admitted - lease.overdraft) if held_elsewhere is None
                else held_elsewhere + lease.held)
        if best is None or left < least or (left == least and lease.end > best.end):
            best, least = lease, left
    return best, least


class RateHeaders:
    """The ``RateLimit-Policy`` and ``RateLimit`` lines of one key's answers, as the bytes that go
    into the response head (what ``KeyLimiter.headers`` says, without its dict and f-strings).

    Built once per key and month: the policy line and each limit's ``RateLimit: "per-x";r=``
    prefix; ``;t=N`` once per second and tightest lease (windows end on whole seconds, so ``t``
    only changes with ``now // 1000``); per answer only ``r`` is formatted (it changes with every
    admit, so a whole line cannot be memoized)."""

    __slots__ = ("limits", "has_month", "until", "prefixes", "t_lease", "second", "head", "suffix")

    def __init__(self, limits: Sequence[Limit]) -> None:
        self.limits = tuple(limits)
        self.has_month = any(limit.window == MONTH for limit in limits)
        self.until = -1  # the prefixes hold until then (a month's w is that month's length)
        self.prefixes: dict[str, bytes] = {}
        self.t_lease: Lease | None = None  # head and suffix are of this lease, in this second
        self.second = -1
        self.head = self.suffix = b""

    def render(self, leases: Sequence[Lease], now: int) -> bytes:
        head, remaining, suffix = self.parts(leases, now)
        return head + b"%d" % remaining + suffix

    def parts(self, leases: Sequence[Lease], now: int) -> tuple[bytes, int, bytes]:
        """``render`` as (the lines up to ``r=``, r, the rest): gateway.limiter keeps the two
        byte strings while no lease changes but by admits, which lower every lease's remaining
        alike (the tightest stays the tightest) and r with them."""
        if now >= self.until:
            head = b"RateLimit-Policy: " + policy_header(self.limits, now).encode() + b"\r\nRateLimit: "
            self.prefixes = {limit.window: head + f'"{limit.policy_name}";r='.encode() for limit in self.limits}
            self.until = window_bounds(MONTH, now)[1] if self.has_month else 2**62
            self.t_lease = None
        if len(leases) == 2:  # (``_tightest`` inlined for the usual rate + quota)
            tight, other = leases
            if not tight.start <= now < tight.end:
                tight.roll(now)
            if not other.start <= now < other.end:
                other.roll(now)
            remaining = tight.store_remaining
            remaining = (max(0, tight.limit.limit - tight.admitted - tight.overdraft) if remaining is None
                         else remaining + tight.held)
            left = other.store_remaining
            left = (max(0, other.limit.limit - other.admitted - other.overdraft) if left is None
                    else left + other.held)
            if left < remaining or (left == remaining and other.end > tight.end):
                tight, remaining = other, left
        else:
            tight, remaining = _tightest(leases, now)
        second = now // 1000
        if second != self.second or tight is not self.t_lease:
            assert tight.end % 1000 == 0  # (window_bounds: every window ends on a whole second)
            self.second, self.t_lease, self.head = second, tight, self.prefixes[tight.limit.window]
            self.suffix = b";t=%d\r\n" % seconds_until(tight.end, now)
        return self.head, remaining if remaining > 0 else 0, self.suffix
