"""Redis connections: parse the supported URLs (standalone, Sentinel, Cluster) and build clients."""

from __future__ import annotations

from dataclasses import dataclass
import re
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff

__all__ = ["DEFAULT_MAX_CONNECTIONS", "RedisTarget", "connect", "parse_redis_url", "redact_redis_url"]

DEFAULT_MAX_CONNECTIONS = 64  # per client (per node on Cluster); callers past it queue (see connect)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL: standalone, Sentinel or Cluster."""

    kind: str  # "standalone", "sentinel" or "cluster"
    url: str  # standalone: the URL itself
    nodes: tuple[tuple[str, int], ...] = ()  # sentinels or cluster seed nodes
    service: str = ""  # sentinel: the monitored master's name
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or ``redis+cluster://``.

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]
    redis+cluster://[[user]:password@]host:port[,host:port...]
    The password is that of the data nodes (Sentinel and Cluster): ACL users work the same.
    Raises ValueError with a message that never contains the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("expected a URL such as redis://host:6379/0")
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("standalone", url)
    if scheme not in ("redis+sentinel", "redis+cluster"):
        raise ValueError(f"unknown scheme {scheme}://; use redis://, rediss://, unix://, redis+sentinel:// "
                         "or redis+cluster://")
    userinfo, at, hostpart = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) if colon else None)
    hosts, _, path = hostpart.partition("/")
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"expected host:port in the node list, got {item.strip()!r}")
        nodes.append((host.strip("[]"), int(port)))
    if scheme == "redis+cluster":
        if path.strip("/"):
            raise ValueError("redis+cluster:// takes no path (Redis Cluster has database 0 only)")
        return RedisTarget("cluster", url, tuple(nodes), username=username, password=password)
    service, _, db = path.partition("/")
    if not service:
        raise ValueError("redis+sentinel:// needs the master's service name: redis+sentinel://host:26379/mymaster")
    if db and not db.isdigit():
        raise ValueError(f"expected a database number after the service name, got {db!r}")
    return RedisTarget("sentinel", url, tuple(nodes), service, int(db or 0), username, password)


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def redact_redis_url(url: str) -> str:
    """The URL fit for a message or a log line: ``redis://:secret@h`` -> ``redis://:***@h``,
    ``?password=secret`` -> ``?password=***``."""
    scheme, sep, rest = url.partition("://")
    head, q, query = rest.partition("?")
    userinfo, at, hosts = head.rpartition("@")  # the last "@", as parse_redis_url reads it
    if at and ":" in userinfo:
        head = userinfo.partition(":")[0] + ":***@" + hosts
    return _QUERY_PASSWORD.sub(r"\1***", scheme + sep + head + q + query)


def connect(url: str, *, timeout: float = 0.5,
            max_connections: int = DEFAULT_MAX_CONNECTIONS) -> aioredis.Redis | RedisCluster:
    """A Redis client where every call has a timeout and one quick retry.

    At most ``max_connections`` connections; a call that finds them all busy waits for one
    to be released, for up to ``timeout`` seconds, then fails with ConnectionError (a 503 for
    a request, never an unbounded wait). redis-py's default pool raises at once instead
    (MaxConnectionsError), which turned bursts of cache misses into 503s.
    Sentinel: the client asks the sentinels for the master, and asks again after a
    connection error or a READONLY reply (a failed-over master that became a replica).
    Cluster: the client follows MOVED and ASK redirections and refreshes its slot map. Its
    per-node pools cannot queue (redis-py has no blocking variant): past ``max_connections``
    per node a call fails at once with MaxConnectionsError.
    """
    target = parse_redis_url(url)
    common = dict(
        socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
    )
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes], username=target.username,
            password=target.password, require_full_coverage=True, max_connections=max_connections, **common,
        )
    if target.kind == "sentinel":
        sentinel = Sentinel(
            list(target.nodes), sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            username=target.username, password=target.password, db=target.db, **common,
        )
        client = sentinel.master_for(target.service, redis_class=_SentinelMasterClient,
                                     connection_pool_class=_BlockingSentinelPool, health_check_interval=15,
                                     max_connections=max_connections, timeout=timeout)
        client.sentinel = sentinel
        return client
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout,
                                           health_check_interval=15, **common)
    return aioredis.Redis.from_pool(pool)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's pool, found through the sentinels, that queues for a connection (with
    BlockingConnectionPool's ``timeout``) instead of raising when all are busy."""


class _SentinelMasterClient(aioredis.Redis):
    """The master's client, which also closes its connections to the sentinels on aclose()."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                await client.aclose()
