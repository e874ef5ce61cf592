"""What keeps one tenant from exhausting Redis: per-org key and create-rate limits, checked in the
same script that adds the new key to its org's index, and a memory gauge for creates. CreateLimits
holds every create to them: the admin API's and `gateway keys create`'s."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from gateway import errors

# In the org's slot ({org_id} hash tag on all three keys), run before the record is written.
# KEYS: the org's key index, its revocation index, its create counter of the current minute.
# ARGV: deadline, key id, created_at, most keys not revoked (0: none), creates a window (0: none),
# the window in ms. Returns {1} when indexed, {-2, count} at the key limit, {-3, ms left} at
# the rate limit; -1 past the deadline.
RESERVE = """
local limit = tonumber(ARGV[4])
if limit > 0 then
  local held = redis.call('ZCARD', KEYS[1]) - redis.call('ZCARD', KEYS[2])
  if held >= limit then return {-2, held} end
end
local rate = tonumber(ARGV[5])
if rate > 0 then
  if tonumber(redis.call('GET', KEYS[3]) or '0') >= rate then return {-3, redis.call('PTTL', KEYS[3])} end
  if redis.call('INCR', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], ARGV[6]) end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
return {1}
"""

RATE_WINDOW_MS = 60_000


@dataclass(frozen=True, slots=True)
class OrgQuota:
    """The limits a create is held to (0: no limit)."""

    max_keys: int = 0
    creates_per_minute: int = 0

    def args(self) -> list[int]:
        return [self.max_keys, self.creates_per_minute, RATE_WINDOW_MS]


NO_QUOTA = OrgQuota()


def check_reserve(reply: Any, quota: OrgQuota) -> None:
    """Raise the refusal the RESERVE script answered, if any (-1 is the caller's: past the deadline)."""
    if not isinstance(reply, list):
        return
    if reply[0] == -2:
        raise errors.KeyLimitReached(quota.max_keys)
    if reply[0] == -3:
        raise errors.TooManyCreates(quota.creates_per_minute, max(1, math.ceil(int(reply[1]) / 1000)))


def memory_fraction(info: dict[str, Any]) -> float:
    """used_memory / maxmemory from INFO memory (the fullest node of a cluster); 0 without maxmemory."""
    nodes = info.values() if info and all(isinstance(v, dict) for v in info.values()) else [info]
    fractions = [int(n.get("used_memory", 0)) / int(n["maxmemory"]) for n in nodes if int(n.get("maxmemory", 0)) > 0]
    return max(fractions, default=0.0)


class MemoryGauge:
    """Redis's memory use as a fraction of maxmemory, read with INFO memory once a second or every
    ``EVERY`` creates while it is well below the high-water mark, and on every create close to it
    (a burst of creates cannot outrun a reading by more than ``EVERY`` records)."""

    FRESH_S = 1.0
    EVERY = 16
    NEAR = 0.9  # within 10% of the mark, a cached reading is not trusted

    def __init__(self, client, high_water: float, clock=time.monotonic) -> None:
        self.redis, self.high_water, self.clock = client, high_water, clock
        self._reading: tuple[float, float] | None = None  # (when, fraction)
        self._since = 0  # creates checked against the cached reading

    async def check(self) -> None:
        """Raise StoreFull when Redis is above the high-water mark (a RedisError when it cannot say)."""
        now = self.clock()
        cached = self._reading
        self._since += 1
        if (cached is None or now - cached[0] >= self.FRESH_S or self._since >= self.EVERY
                or cached[1] >= self.high_water * self.NEAR):
            cached = self._reading = (now, memory_fraction(await self.redis.info("memory")))
            self._since = 0
        if cached[1] >= self.high_water:
            raise errors.StoreFull()


class CreateLimits:
    """What every key create is held to, for the admin API and `gateway keys create` alike: the
    memory high-water mark (always), then the org's key limit and create rate (``settings``:
    memory_high_water, max_keys_per_org, create_rate_per_org)."""

    def __init__(self, client, settings, clock=time.monotonic) -> None:
        self.memory = MemoryGauge(client, settings.memory_high_water, clock)
        self.quota = OrgQuota(settings.max_keys_per_org, settings.create_rate_per_org)

    async def admit(self, *, org_limits: bool = True) -> OrgQuota:
        """Raise StoreFull above the mark; else the quota to pass to KeyStore.create (no limits
        when ``org_limits`` is false: an operator's choice, never the memory mark's)."""
        # SECURITY: refused while Redis is near maxmemory, so that revokes (tiny writes) still fit.
        await self.memory.check()
        return self.quota if org_limits else NO_QUOTA
