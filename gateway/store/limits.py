"""Per-key rate-limit and quota budgets in Redis (issue 16; docs/operations.md, "Redis layout").

One (key, window) is one integer string: the units leased out to gateway nodes in that window and
not given back. The hash tag is the key's public id (``record.id``, the same for every secret of a
rolled key, so a roll keeps its counters; every window of a key in one slot). A node admits only
from budget it leased (gateway.leases), so the admitted total never exceeds the limit.

Three operations: LEASE (one script call for the windows one key needs), RETURN (budget a node
did not use, one script call per key, pipelined), and the reclaim broadcast on ``reclaim_channel``
(a node that found too little left asks the others to return what they hold of that key).
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple, Sequence

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from gateway.leases import Want
from gateway.ratelimit import Limit, window_bounds
from gateway.store.faults import Unavailable

EXPIRE_GRACE_MS = 60_000  # a window's counter outlives the window by this much (clock skew between nodes)

# KEYS: the budget keys of one key's wanted windows (one slot: the {key_id} hash tag).
# ARGV: per key, three values: the units wanted, the window's limit, its expiry (ms: end + grace).
# Grants min(wanted, limit - leased) per window; returns {granted, left after it, ...} per key.
LEASE = """
local out = {}
for i, key in ipairs(KEYS) do
  local want, limit = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local leased = tonumber(redis.call('GET', key) or '0')
  local grant = math.min(want, limit - leased)
  if grant < 0 then grant = 0 end
  if grant > 0 then
    leased = redis.call('INCRBY', key, grant)
    redis.call('PEXPIREAT', key, ARGV[3 * i])
  end
  out[2 * i - 1] = grant
  out[2 * i] = math.max(0, limit - leased)
end
return out
"""

# KEYS: budget keys of one key; ARGV: the units given back to each. Never below 0, and only to a
# counter that still exists (an expired window stays gone). Returns nothing useful.
RETURN = """
for i, key in ipairs(KEYS) do
  local leased = redis.call('GET', key)
  if leased then
    local left = tonumber(leased) - tonumber(ARGV[i])
    if left < 0 then left = 0 end
    redis.call('SET', key, left, 'KEEPTTL')
  end
end
return 1
"""


class Grant(NamedTuple):
    """What the store gave for one Want: ``amount`` units, and ``left`` unleased after it."""

    window: str
    start: int
    amount: int
    left: int


class BudgetStore:
    """The leased budgets of every key's limits (``KeyStore.limits``)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "gw") -> None:
        self.redis = client
        self.p = prefix
        self.reclaim_channel = f"{prefix}:rl:reclaim"
        self._lease = client.register_script(LEASE)
        self._return = client.register_script(RETURN)

    def budget_key(self, key_id: str, window: str, start_ms: int) -> str:
        return f"{self.p}:rl:{{{key_id}}}:{window}:{start_ms}"

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

    async def lease(self, key_id: str, wants: Sequence[Want], limits: dict[str, Limit]) -> list[Grant]:
        """Lease ``wants`` of one key in one script call (``limits``: window -> its Limit).
        Raises Unavailable on a Redis fault (then nothing is known to be granted)."""
        keys, args = [], []
        for want in wants:
            keys.append(self.budget_key(key_id, want.window, want.start))
            end = window_bounds(want.window, want.start)[1]
            args += [want.amount, limits[want.window].limit, end + EXPIRE_GRACE_MS]
        try:
            reply = await self._lease(keys=keys, args=args)
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err
        return [Grant(want.window, want.start, int(reply[2 * i]), int(reply[2 * i + 1]))
                for i, want in enumerate(wants)]

    async def give_back(self, returns: Sequence[tuple[str, Sequence[Want]]]) -> int:
        """Return unused budget, ``(key_id, wants)`` per key, in one round trip (pipelined; on a
        cluster, whose pipelines refuse scripts, concurrently): the number of script calls.
        Raises Unavailable on a Redis fault (what was not returned is lost: under-admission)."""
        calls = [(key_id, wants) for key_id, wants in returns if wants]
        if not calls:
            return 0

        def one(client, key_id: str, wants: Sequence[Want]):
            return self._return(keys=[self.budget_key(key_id, w.window, w.start) for w in wants],
                                args=[w.amount for w in wants], client=client)
        try:
            if isinstance(self.redis, RedisCluster):
                await asyncio.gather(*(one(self.redis, key_id, wants) for key_id, wants in calls))
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key_id, wants in calls:
                        await one(pipe, key_id, wants)
                    await pipe.execute()
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err
        return len(calls)

    async def reclaim(self, key_id: str, window: str, start: int, returned: bool = False) -> None:
        """Ask every node to return what it holds of ``key_id`` ("<key_id> <window> <start>"), or
        (``returned``) say that this node just did ("... +"). Raises Unavailable on a Redis fault."""
        try:
            await self.redis.publish(self.reclaim_channel, f"{key_id} {window} {start}{' +' if returned else ''}")
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err


def parse_reclaim(data: str) -> tuple[str, str, int, bool] | None:
    """A reclaim message: (key id, window, window start, is it a "returned" notice), None if malformed."""
    parts = data.split(" ")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "+") or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2]), len(parts) == 4
