"""Fill Redis with many API keys through gateway.store.KeyStore.create itself.

The keys are created the way the admin API creates them (same round trips, same layout), many
at a time with asyncio.gather, in a few processes for large counts: about 5,000 keys/s per
process here, so 100,000 keys take ~15 s and 1,000,000 about two minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from concurrent.futures import ProcessPoolExecutor

from gateway import store as store_mod

SCOPES = ("tasks:read", "reservations:read", "properties:read")  # GET /v1/tasks needs tasks:read
ACTOR = "usr_bench"
CONCURRENCY = 64  # creates in flight per process (each is three round trips)


def org_for(i: int, keys_per_org: int, org_prefix: str = "org_bench") -> str:
    return f"{org_prefix}_{i // keys_per_org:07d}"


async def _create_range(url: str, start: int, stop: int, keys_per_org: int, keep: int, org_prefix: str) -> list[str]:
    client = store_mod.connect(url, timeout=30)
    store = store_mod.KeyStore(client, "gw")
    now_ms = int(time.time() * 1000)
    kept: list[str] = []

    async def one(i: int) -> str:
        _, secret = await store.create(org_id=org_for(i, keys_per_org, org_prefix), name=f"Integration {i:07d}",
                                       scopes=SCOPES, expires_at=None, actor=ACTOR, now_ms=now_ms)
        return secret

    try:
        for first in range(start, stop, CONCURRENCY):
            batch = range(first, min(stop, first + CONCURRENCY))
            secrets = await asyncio.gather(*(one(i) for i in batch))
            kept += [s for i, s in zip(batch, secrets, strict=True) if i < keep]
    finally:
        await client.aclose()
    return kept


def _create_range_sync(*args) -> list[str]:
    return asyncio.run(_create_range(*args))


def create_keys(url: str, n: int, *, keys_per_org: int = 10, keep: int | None = None, processes: int = 2,
                org_prefix: str = "org_bench") -> list[str]:
    """Create ``n`` active keys over n / keys_per_org orgs; return the secrets of the first ``keep``.

    Call it from synchronous code (it runs its own event loops).
    """
    keep = n if keep is None else keep
    if n < 20_000 or processes <= 1:
        return _create_range_sync(url, 0, n, keys_per_org, keep, org_prefix)
    bounds = [n * p // processes for p in range(processes + 1)]
    with ProcessPoolExecutor(processes) as pool:
        parts = [pool.submit(_create_range_sync, url, a, b, keys_per_org, keep, org_prefix)
                 for a, b in itertools.pairwise(bounds)]
        return [s for part in parts for s in part.result()]
