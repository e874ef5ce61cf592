"""Writes confirmed by a replica (Redis WAIT), so that an acknowledged write survives a failover."""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

__all__ = ["NotReplicated", "ReplicaGuard", "parse_min_replicas"]

AUTO = -1  # --redis-min-replicas auto
INFO_EVERY = 5.0  # seconds an INFO replication + marker reading is reused (auto only, until a replica is seen)


class NotReplicated(RedisError):
    """The master ran the write, but fewer replicas than required confirmed it in time: it may
    or may not survive a failover."""


def parse_min_replicas(value: str | int) -> int:
    """``auto`` -> AUTO, else a whole number from 0 to 16 (ValueError naming what is accepted)."""
    text = str(value).strip().lower()
    if text == "auto":
        return AUTO
    if not (text.isascii() and text.isdigit() and int(text) <= 16):
        raise ValueError(f"expected auto or a number of replicas from 0 to 16, got {value!r}")
    return int(text)


class ReplicaGuard:
    """How many replicas must confirm a write, and the WAIT that checks it.

    ``auto``: 1 once this deployment has had a replica, 0 before that. "Has had" is read from
    the master (INFO replication, at most every INFO_EVERY seconds) and from a marker key
    (``marker``) that the first process to see a replica writes, so it replicates with the data:
    a freshly promoted master with no replica yet (a second failover, the old master still
    resyncing), or a process started meanwhile, still requires 1 and answers NotReplicated
    instead of taking unconfirmed writes. Sticky for the life of the process, too. Only an
    operator lowers it: ``--redis-min-replicas 0``, or deleting the marker key. One
    confirmation is enough with any number of replicas: Sentinel promotes the replica with the
    largest replication offset (at equal replica-priority), which holds every confirmed write.
    Redis Cluster: 0 (not covered, see docs/operations.md, "Failover").
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, required: int = AUTO, timeout_ms: int = 500,
                 marker: str = "gw:replicated") -> None:
        self.client = client
        self.marker = marker
        self.required = 0 if isinstance(client, RedisCluster) else required
        # WAIT blocks for up to timeout_ms: well inside the client's own read timeout, so that
        # too few replicas is an answer (0), not a timed-out call.
        pool = getattr(client, "connection_pool", None)
        socket_timeout = pool.connection_kwargs.get("socket_timeout") if pool is not None else None
        self.timeout_ms = min(timeout_ms, int(socket_timeout * 500)) if socket_timeout else timeout_ms
        self._read_at = float("-inf")

    async def needed(self) -> int:
        if self.required != AUTO:
            return self.required
        now = time.monotonic()
        if now - self._read_at >= INFO_EVERY:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.info("replication")
                pipe.get(self.marker)
                info, seen = await pipe.execute()
            self._read_at = now
            connected = int(info.get("connected_slaves", 0))
            if connected >= 1 and seen is None:
                await self.client.set(self.marker, connected)  # replicated: promoted replicas know it
            if connected >= 1 or seen is not None:
                self.required = 1
                return 1
        return 0

    async def check(self, got: int, needed: int) -> None:
        """The answer of ``WAIT needed timeout_ms``: NotReplicated when too few confirmed."""
        if int(got) < needed:
            # The server may no longer be the master (a failover under way): drop the pooled
            # connections so the next command asks the sentinels again.
            await self.client.connection_pool.disconnect()
            raise NotReplicated(f"{got} of {needed} replicas confirmed the write within {self.timeout_ms} ms")
