"""Background tasks of a gateway process: the revocation listener and the last-used flusher."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from gateway.cache import VerdictCache
from gateway.metrics import Metrics
from gateway.store import KeyStore
from gateway.usage import UsageBuffer

log = logging.getLogger("gateway")

PING_EVERY = 1.0  # seconds between liveness pings on the subscription
SILENCE_LIMIT = 3.0  # no reply for this long: the channel is broken


async def listen_for_revocations(store: KeyStore, cache: VerdictCache, metrics: Metrics) -> None:
    """Keep the cache in step with revocations published by admin API processes.

    SECURITY: while subscribed and hearing pongs, the cache is trusted; on any error or
    silence it is emptied and bypassed until a new subscription is confirmed, so a
    missed message can never leave a revoked key cached.
    """
    delay = 0.05
    while True:
        pubsub = store.redis.pubsub()
        try:
            await pubsub.subscribe(store.channel)
            await _await_subscribed(pubsub)
            cache.clear(trusted=True)
            delay = 0.05
            last_seen = last_ping = time.monotonic()
            while True:
                msg = await pubsub.get_message(timeout=0.25)
                now = time.monotonic()
                if msg is not None:
                    last_seen = now
                    if msg["type"] == "message":
                        cache.invalidate(msg["data"].decode())
                        metrics.invalidations.inc()
                if now - last_ping >= PING_EVERY:
                    await pubsub.ping()
                    last_ping = now
                if now - last_seen > SILENCE_LIMIT:
                    raise ConnectionError("revocation channel went silent")
        except asyncio.CancelledError:
            cache.clear(trusted=False)
            raise
        except (RedisError, OSError) as exc:
            if cache.trusted:
                log.warning("revocation channel lost (%s); cache bypassed until resubscribed", exc)
            cache.clear(trusted=False)
            metrics.resyncs.inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        finally:
            try:
                await asyncio.shield(pubsub.aclose())
            except (RedisError, OSError):
                pass


async def _await_subscribed(pubsub) -> None:
    deadline = time.monotonic() + SILENCE_LIMIT
    while time.monotonic() < deadline:
        msg = await pubsub.get_message(timeout=0.25)
        if msg is not None and msg["type"] == "subscribe":
            return
    raise ConnectionError("no subscription confirmation")


async def flush_usage(store: KeyStore, usage: UsageBuffer, metrics: Metrics) -> bool:
    """Write buffered last-used data once; on failure keep it for the next try."""
    batch = usage.drain()
    if not batch:
        return True
    try:
        await store.record_usage(batch)
    except (RedisError, OSError) as exc:
        usage.restore(batch)
        metrics.flushes.labels("failed").inc()
        log.warning("last-used flush of %d keys failed, will retry: %s", len(batch), exc)
        return False
    finally:
        metrics.usage_pending.set(len(usage))
    metrics.flushes.labels("ok").inc()
    metrics.flush_size.observe(len(batch))
    return True


async def usage_flusher(store: KeyStore, usage: UsageBuffer, metrics: Metrics, interval: float) -> None:
    """Flush every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        await flush_usage(store, usage, metrics)
