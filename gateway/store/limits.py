"""Per-key rate-limit and quota budgets in Redis (issue 16; docs/operations.md, "Redis layout").

One (key, window) is one integer string: the units leased out to gateway nodes in that window and
not given back. The hash tag is the key's public id (``record.id``, the same for every secret of a
rolled key, so a roll keeps its counters; every window of a key in one slot). A node admits only
from budget it leased (gateway.leases), so the admitted total never exceeds the limit.

Three operations: LEASE (one script call for the windows one key needs, on Redis's clock), RETURN
(budget a node did not use, one script call per key, pipelined), both idempotent under redis-py's
retries, and the reclaim broadcast on ``reclaim_channel`` (a node that found too little left asks
the others to return what they hold of that key).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from typing import NamedTuple, Sequence

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError, RedisError, ResponseError

from gateway.leases import Want
from gateway.ratelimit import Limit, window_bounds
from gateway.store.faults import Unavailable

EXPIRE_GRACE_MS = 60_000  # a window's counter outlives the window by this much
OP_TTL_MS = 120_000  # how long a call's nonce is remembered (far longer than any client retry)
RETURN_CONCURRENCY = 4  # return script calls in flight at once (cluster; standalone pipelines them)
RETURN_BATCH = 256  # return script calls per pipeline (standalone and Sentinel)
# Redis errors that mean "Redis cannot serve now" (an outage: back off); any other ResponseError
# is an answer about this call alone (a bug, a full pool of this process): no back-off.
OUTAGE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY", "OOM",
                  "NOREPLICAS", "MISCONF")

# SECURITY: both scripts are idempotent. redis-py retries a command (and a whole pipeline) once
# after a timeout, and the first attempt may have run: a second RETURN would credit the budget
# twice (over-admission), a second LEASE would grant twice and lose the first grant. Every call
# carries a nonce (KEYS[1], in the key's slot): a repeated call answers what the first did.
#
# LEASE. KEYS: the nonce, then per wanted window of one key its budget key and its rates hash (one
# slot: the {key_id} hash tag). ARGV: check (1: refuse a window that does not hold Redis's clock),
# this node's name, then per window six values: the units wanted, the window's limit, its start
# and its end (ms), this node's rate of the key (milli-units a second, 0: none yet) and how long a
# rate counts (ms).
# SECURITY: the window is Redis's, not the node's: with ``check`` a want whose [start, end) does
# not hold Redis's TIME is granted nothing (answered -1 as "left"), so a node whose clock is off
# cannot lease a window that is over (unlimited once it expired) or not yet begun (a second
# window's budget), and the counter's expiry is never in the past.
# The rates hash (node -> "rate at") is the key's traffic on every node that leased it lately; its
# sum sizes each node's lease by its share (gateway.leases.Lease.share). Rates older than their
# stale time are dropped as they are read.
# Answers {Redis's now (ms), then per window: granted, left after it, the sum of the rates}; a
# repeated nonce answers the first reply (kept as decimal integers: limits have up to 15 digits).
LEASE = """
local seen = redis.call('GET', KEYS[1])
if seen then
  local first = {}
  for v in string.gmatch(seen, '%%-?%%d+') do first[#first + 1] = tonumber(v) end
  return first
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local check, node = ARGV[1] == '1', ARGV[2]
local out = {now}
for w = 1, (#KEYS - 1) / 2 do
  local j = 6 * (w - 1) + 3
  local want, limit = tonumber(ARGV[j]), tonumber(ARGV[j + 1])
  local start, stop = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local rate, stale = tonumber(ARGV[j + 4]), tonumber(ARGV[j + 5])
  local rates = KEYS[2 * w + 1]
  if rate > 0 then redis.call('HSET', rates, node, rate .. ' ' .. now) end
  local total = 0
  local seen = redis.call('HGETALL', rates)
  for k = 1, #seen, 2 do
    local r, at = string.match(seen[k + 1], '^(%%d+) (%%d+)$')
    if r and now - tonumber(at) <= stale then total = total + tonumber(r) else redis.call('HDEL', rates, seen[k]) end
  end
  if total > 0 then redis.call('PEXPIRE', rates, stale) end
  if check and (now < start or now >= stop) then
    out[#out + 1] = 0
    out[#out + 1] = -1
    out[#out + 1] = total
  else
    local key = KEYS[2 * w]
    local leased = tonumber(redis.call('GET', key) or '0')
    local grant = math.min(want, limit - leased)
    if grant < 0 then grant = 0 end
    if grant > 0 then
      leased = redis.call('INCRBY', key, grant)
      redis.call('PEXPIREAT', key, math.max(stop, now) + %(grace)d)
    end
    out[#out + 1] = grant
    out[#out + 1] = math.max(0, limit - leased)
    out[#out + 1] = total
  end
end
local text = {}  -- (%%d: cjson and tostring write 15-digit limits as 1e+15)
for i, v in ipairs(out) do text[i] = string.format('%%d', v) end
redis.call('SET', KEYS[1], table.concat(text, ' '), 'PX', %(op_ttl)d)
return out
""" % {"grace": EXPIRE_GRACE_MS, "op_ttl": OP_TTL_MS}

# RETURN. KEYS: the nonce, then budget keys of one key; ARGV: the units given back to each. Never
# below 0, only to a counter that still exists (an expired window stays gone), once per nonce.
RETURN = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', %(op_ttl)d) then return 0 end
for i = 2, #KEYS do
  local leased = redis.call('GET', KEYS[i])
  if leased then
    local left = tonumber(leased) - tonumber(ARGV[i - 1])
    if left < 0 then left = 0 end
    redis.call('SET', KEYS[i], left, 'KEEPTTL')
  end
end
return 1
""" % {"op_ttl": OP_TTL_MS}


def is_outage(err: BaseException) -> bool:
    """Whether a failed call means Redis cannot serve now (back off) rather than this call alone
    failed: this process's pool was full (MaxConnectionsError), or Redis answered an error about
    the call (a script error: logged; NOSCRIPT never gets here, redis-py loads the script again)."""
    if isinstance(err, MaxConnectionsError):
        return False
    if isinstance(err, ResponseError):
        return str(err).split(" ", 1)[0].upper() in OUTAGE_REPLIES
    return True


class Grant(NamedTuple):
    """What the store gave for one Want: ``amount`` units, and ``left`` unleased after it
    (``left`` -1: the window does not hold Redis's clock, nothing was granted); ``rates``: the
    key's traffic on every node that leased it lately (milli-units a second)."""

    window: str
    start: int
    amount: int
    left: int
    rates: int = 0


class LeaseReply(NamedTuple):
    now: int  # Redis's clock when it ran the lease (ms)
    grants: list[Grant]


class BudgetStore:
    """The leased budgets of every key's limits (``KeyStore.limits``). ``confirmed``:
    KeyStore._confirmed, through which a lease of a quota window is confirmed by a replica."""

    def __init__(self, client: aioredis.Redis, prefix: str = "gw", confirmed=None) -> None:
        self.redis = client
        self.p = prefix
        self.reclaim_channel = f"{prefix}:rl:reclaim"
        self.config_key = f"{prefix}:rl:config"  # the gateways' limits configuration (plans.describe)
        self.node = secrets.token_hex(6)  # names this process's nonces and reclaims
        self._seq = itertools.count()
        self._confirmed = confirmed
        self._lease = client.register_script(LEASE)
        self._return = client.register_script(RETURN)

    def budget_key(self, key_id: str, window: str, start_ms: int) -> str:
        return f"{self.p}:rl:{{{key_id}}}:{window}:{start_ms}"

    def rates_key(self, key_id: str, window: str) -> str:
        """node -> its recent rate of the key in ``window`` (see LEASE)."""
        return f"{self.p}:rl:{{{key_id}}}:r:{window}"

    def op_key(self, key_id: str, op_id: str) -> str:
        """The nonce of one LEASE or RETURN call (what a retry of it finds: see LEASE)."""
        return f"{self.p}:rl:{{{key_id}}}:op:{op_id}"

    def _nonce(self, key_id: str) -> str:
        return self.op_key(key_id, f"{self.node}:{next(self._seq)}")

    async def usage(self, key_id: str, limits: Sequence[Limit], now_ms: int) -> dict[str, int]:
        """window -> units leased in the current window (what the page shows as used so far: it
        includes budget nodes hold and have not spent, which they give back within seconds of
        going idle). Raises Unavailable on a Redis fault."""
        if not limits:
            return {}
        names = [self.budget_key(key_id, limit.window, window_bounds(limit.window, now_ms)[0]) for limit in limits]
        try:
            values = await self.redis.mget(names)
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err
        return {limit.window: int(value or 0) for limit, value in zip(limits, values, strict=True)}

    async def lease(self, key_id: str, wants: Sequence[Want], limits: dict[str, Limit], *,
                    check: bool = True) -> LeaseReply:
        """Lease ``wants`` of one key in one script call (``limits``: window -> its Limit), with
        Redis's clock; ``check``: grant nothing for a window that does not hold it. A lease of a
        quota window is confirmed by a replica (KeyStore._confirmed, when replicas are
        required): a failover cannot lose it and give the quota out again.
        Raises Unavailable on a Redis fault (then nothing is known to be granted)."""
        keys, args = [self._nonce(key_id)], ["1" if check else "0", self.node]
        for want in wants:
            keys += [self.budget_key(key_id, want.window, want.start), self.rates_key(key_id, want.window)]
            end = window_bounds(want.window, want.start)[1]
            args += [want.amount, limits[want.window].limit, want.start, end, max(0, want.rate),
                     max(1, want.stale_ms or end - want.start)]
        try:
            if self._confirmed is not None and any(limits[w.window].is_quota for w in wants):
                [reply] = await self._confirmed(lambda c: _one(self._lease(keys=keys, args=args, client=c)))
            else:
                reply = await self._lease(keys=keys, args=args)
        except (RedisError, OSError) as err:
            raise Unavailable(str(err), outage=is_outage(err)) from err
        return LeaseReply(int(reply[0]), [Grant(want.window, want.start, *(int(v) for v in reply[3 * i + 1:3 * i + 4]))
                                          for i, want in enumerate(wants)])

    async def give_back(self, returns: Sequence[tuple[str, Sequence[Want]]]) -> int:
        """Return unused budget, ``(key_id, wants)`` per key: pipelined in batches (on a cluster,
        whose pipelines refuse scripts, at most RETURN_CONCURRENCY calls at once, so a tick of
        thousands of keys cannot take every connection of a node); the number of script calls.
        Raises Unavailable on a Redis fault (a return may or may not have landed: the caller
        treats it as lost, under-admission, never over)."""
        calls = [(key_id, wants) for key_id, wants in returns if wants]
        if not calls:
            return 0

        def one(client, key_id: str, wants: Sequence[Want]):
            return self._return(keys=[self._nonce(key_id), *(self.budget_key(key_id, w.window, w.start) for w in wants)],
                                args=[w.amount for w in wants], client=client)
        try:
            if len(calls) == 1:  # one call: no pipeline (its SCRIPT EXISTS would be a second round trip)
                await one(self.redis, *calls[0])
            elif isinstance(self.redis, RedisCluster):
                gate = asyncio.Semaphore(RETURN_CONCURRENCY)

                async def bounded(key_id: str, wants: Sequence[Want]) -> None:
                    async with gate:
                        await one(self.redis, key_id, wants)
                await asyncio.gather(*(bounded(key_id, wants) for key_id, wants in calls))
            else:
                for i in range(0, len(calls), RETURN_BATCH):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for key_id, wants in calls[i:i + RETURN_BATCH]:
                            await one(pipe, key_id, wants)
                        await pipe.execute()
        except (RedisError, OSError) as err:
            raise Unavailable(str(err), outage=is_outage(err)) from err
        return len(calls)

    async def announce(self, described: str) -> None:
        """Write this gateway's limits configuration (plans.describe) for the admin API to
        compare with its own. Raises Unavailable on a Redis fault."""
        try:
            await self.redis.set(self.config_key, described)
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err

    async def announced(self) -> str | None:
        """The limits configuration the gateways last wrote (None: none has yet)."""
        try:
            value = await self.redis.get(self.config_key)
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err
        return None if value is None else value.decode()

    async def ping(self) -> bool:
        """Whether Redis answers now (checked before budget is let go: see Limiter.return_idle)."""
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def reclaim(self, key_id: str, window: str, start: int, returned: int | None = None) -> None:
        """Ask every node to return what it holds of ``key_id`` ("<key_id> <window> <start>
        <node>"), or say that this node just returned ``returned`` units of it ("... +<n>");
        ``node`` tells a node its own requests apart from another's. Raises Unavailable on a
        Redis fault."""
        tail = "" if returned is None else f" +{returned}"
        try:
            await self.redis.publish(self.reclaim_channel, f"{key_id} {window} {start} {self.node}{tail}")
        except (RedisError, OSError) as err:
            raise Unavailable(str(err), outage=is_outage(err)) from err


async def _one(call) -> list:
    return [await call]


def parse_reclaim(data: str) -> tuple[str, str, int, str, int | None] | None:
    """A reclaim message: (key id, window, window start, sending node, the units it returned
    or None for a request), None if malformed."""
    parts = data.split(" ")
    if len(parts) not in (4, 5) or not parts[2].isdigit():
        return None
    if len(parts) == 4:
        return parts[0], parts[1], int(parts[2]), parts[3], None
    if not (parts[4].startswith("+") and parts[4][1:].isdigit()):
        return None
    return parts[0], parts[1], int(parts[2]), parts[3], int(parts[4][1:])
