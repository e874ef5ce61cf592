"""Per-key rate-limit and quota budgets in Redis (issue 16; docs/operations.md, "Redis layout").

One (key, window) is one integer string: the units leased out to gateway nodes in that window and
not given back. The hash tag is the key's public id (``record.id``, the same for every secret of a
rolled key, so a roll keeps its counters; every window of a key in one slot). A node admits only
from budget it leased (gateway.leases), so the admitted total never exceeds the limit.
"""

from __future__ import annotations

from typing import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.ratelimit import Limit, window_bounds
from gateway.store.faults import Unavailable


class BudgetStore:
    """The leased budgets of every key's limits (``KeyStore.limits``)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "gw") -> None:
        self.redis = client
        self.p = prefix

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
