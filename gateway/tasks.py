"""Background tasks of a gateway process: the revocation listener and the last-used flusher."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Callable


from gateway.cache import VerdictCache
from gateway.metrics import Metrics
from gateway.store import FAULTS, KeyStore, NotReplicated
from gateway.usage import UsageBuffer

log = logging.getLogger("gateway")

USAGE_CHUNK = 2048  # keys per HSET: under 1 ms of Redis time, and a few ms of the gateway's loop between yields
BEAT_EVERY = 60.0  # seconds; well inside the ledger's FOLD_AFTER_MS (10 min), so a writing node is never folded
FOLD_DEAD_EVERY = 300.0  # seconds between looks for dead gateways' usage hashes
FOLD_DEAD_CHUNKS = 25  # fold chunks per flush interval while some are left (~0.1 s of Redis time)
PING_EVERY = 0.25  # seconds between liveness pings on the subscription
SILENCE_LIMIT = 1.0  # the cache is trusted for this long after Redis was last heard from
REGISTER_EVERY = 1.0  # seconds between registry refreshes
REGISTRY_TTL_MS = 3000  # a gateway that stops refreshing leaves the registry after this
ACK_TIMEOUT = SILENCE_LIMIT + 0.25  # how long the admin API waits for acknowledgements
# Seconds a lapsed trust waits for a heartbeat to come back before the subscription is renewed
# (and the cache emptied). A loop that lagged past SILENCE_LIMIT (a burst, a starved machine)
# gets its trust back with the cache intact when the next beat returns: the invalidations
# published meanwhile arrive on the same subscription before that beat, and are applied first.
RESUBSCRIBE_AFTER = 2.0
SHUTDOWN_FLUSH_DEADLINE = 5.0  # seconds; well inside a 30 s orchestrator grace period


async def listen_for_revocations(store: KeyStore, cache: VerdictCache, metrics: Metrics,
                                 node_id: str, reads: KeyStore | None = None,
                                 on_reclaim: Callable[[str], None] | None = None) -> None:
    """Keep the cache in step with revocations published by admin API processes (and, with
    ``on_reclaim``, pass the rate limiter's reclaim messages on: gateway.limiter).

    SECURITY: the cache is trusted only until SILENCE_LIMIT after the last heartbeat that went
    out through the store's client (the master, confirmed by the replicas like a key write:
    KeyStore.heartbeat) and came back on the subscription. Beats go out every PING_EVERY. So a
    subscription to a server that no longer gets the master's publishes (an old master after
    a failover) loses its trust within SILENCE_LIMIT, however well that server answers pings.
    Each revocation is applied, then acknowledged with this node's id (the process's one id,
    which its usage ledger uses too: ``UsageBuffer.node_id``), so the admin API can answer a
    revoke once every registered gateway has dropped the key. A gateway is registered
    before its cache is trusted, and drops that trust if it cannot stay registered, so an admin
    API that waits ACK_TIMEOUT for a silent gateway knows that gateway no longer serves from its
    cache. When a beat is not confirmed, the connections of ``store`` and ``reads`` (the request
    reads' client) are dropped, so that their next commands ask the sentinels for the master.
    A lapse without an error (no beat back in time) bypasses the cache at once, and renews the
    subscription only if no beat has come back RESUBSCRIBE_AFTER later: so a lagging loop does
    not empty its cache, which would turn the burst that made it lag into a storm of misses.
    """
    beats = store.beat_channel(node_id)
    delay = 0.05
    while True:
        pubsub = None
        try:
            await store.initialize()
            pubsub = store.redis.pubsub()
            channels = [store.channel, beats] + ([store.limits.reclaim_channel] if on_reclaim else [])
            await pubsub.subscribe(*channels)
            await _await_subscribed(pubsub, len(channels))
            await store.register_gateway(node_id, REGISTRY_TTL_MS)
            sent_at = time.monotonic()
            token = await _beat(store, node_id, reads)
            await _await_beat(pubsub, token, beats)
            cache.clear(trusted_until=sent_at + SILENCE_LIMIT)
            delay = 0.05
            last_ping = last_register = time.monotonic()
            pending: dict[str, float] = {}
            lapsed_at: float | None = None
            while True:
                msg = await _next_message(pubsub, PING_EVERY / 2)
                now = time.monotonic()
                if msg is not None and msg["type"] == "message":
                    channel = msg["channel"].decode()
                    if channel == beats:
                        # Heard from the master after everything it published before the beat.
                        at = pending.pop(msg["data"].decode(), None)
                        if at is not None:
                            cache.trust_until(at + SILENCE_LIMIT)
                    elif on_reclaim is not None and channel == store.limits.reclaim_channel:
                        try:
                            on_reclaim(msg["data"].decode())
                        except Exception:  # a limiter bug must not cost the cache its channel
                            log.exception("reclaim message not handled")
                    else:
                        # "<id>[,<id>...] <nonce>": a rolled key's record and aliases together.
                        key_ids, _, nonce = msg["data"].decode().partition(" ")
                        for key_id in key_ids.split(","):
                            cache.invalidate(key_id)
                        metrics.invalidations.inc()
                        if nonce:
                            await store.acknowledge(nonce, node_id)
                if now - last_ping >= PING_EVERY:
                    pending = {k: v for k, v in pending.items() if now - v < SILENCE_LIMIT}
                    pending[await _beat(store, node_id, reads)] = now
                    last_ping = now
                if now - last_register >= REGISTER_EVERY:
                    await store.register_gateway(node_id, REGISTRY_TTL_MS)
                    last_register = now
                if cache.trusted:
                    lapsed_at = None
                elif lapsed_at is None:
                    lapsed_at = now  # bypassed from now on (cache.get answers MISS), entries kept
                    log.warning("no heartbeat came back within %.1f s; cache bypassed until one does",
                                SILENCE_LIMIT)
                elif now - lapsed_at >= RESUBSCRIBE_AFTER:
                    await _reconnect(store, reads)
                    raise ConnectionError("revocation channel went silent (no heartbeat came back)")
        except asyncio.CancelledError:
            cache.clear()
            raise
        except FAULTS as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A cancellation that a timeout inside the Redis client turned into an error:
                # shutting down, not a lost channel.
                cache.clear()
                raise asyncio.CancelledError() from exc
            if cache.trusted:
                log.warning("revocation channel lost (%s); cache bypassed until resubscribed", exc)
            cache.distrust()  # entries stay only for --stale-if-error; resubscribing clears them
            metrics.resyncs.inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        finally:
            try:
                if pubsub is not None:
                    await asyncio.shield(pubsub.aclose())
            except FAULTS:
                pass


async def _beat(store: KeyStore, node_id: str, reads: KeyStore | None) -> str:
    """Send one confirmed heartbeat; return its token."""
    token = secrets.token_hex(8)
    try:
        await store.heartbeat(node_id, token)
    except NotReplicated:
        # This server may no longer be the master: the request reads must leave it too.
        await _reconnect(store, reads)
        raise
    return token


async def _reconnect(store: KeyStore, reads: KeyStore | None) -> None:
    for s in (store, reads):
        if s is not None:
            try:
                await s.redis.connection_pool.disconnect()
            except (*FAULTS, AttributeError):  # a cluster client has no single pool
                pass


async def _next_message(pubsub, timeout: float):
    """``pubsub.get_message(timeout=...)``, except that a cancellation is never lost. One that lands
    as the client's read timeout expires can be taken by asyncio.timeout (Python 3.11) for that
    timeout, and the client answers None: the listener would then loop on, cancelled, until the
    shutdown cancels it again 3 s later (app.py), with an error in the log."""
    msg = await pubsub.get_message(timeout=timeout)
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()
    return msg


async def _await_beat(pubsub, token: str, beats: str) -> None:
    """The first beat must come back before the cache is trusted (messages before it are older
    than the subscription's start, whose clear() drops everything anyway)."""
    deadline = time.monotonic() + SILENCE_LIMIT
    while time.monotonic() < deadline:
        msg = await _next_message(pubsub, 0.05)
        if msg is not None and msg["type"] == "message" and msg["channel"].decode() == beats \
                and msg["data"].decode() == token:
            return
    raise ConnectionError("the heartbeat did not come back on the subscription")


async def _await_subscribed(pubsub, channels: int = 1) -> None:
    deadline = time.monotonic() + SILENCE_LIMIT
    while time.monotonic() < deadline:
        msg = await _next_message(pubsub, 0.25)
        if msg is not None and msg["type"] == "subscribe":
            channels -= 1
            if not channels:
                return
    raise ConnectionError("no subscription confirmation")


async def flush_usage(store: KeyStore, usage: UsageBuffer, metrics: Metrics) -> bool:
    """Write the totals changed since the last flush, and the usage history when it is due
    (``UsageBuffer.history_due``: every HISTORY_EVERY seconds, when an hour is over, at shutdown):
    per USAGE_CHUNK keys one HSET and one history script call, queued together
    (gateway.store.ledger); then fold this node's hashes of the hours, then the days, that are
    over into the per-key history buckets.

    On failure everything not written is kept for the next try. Before writing, the node says it is alive when its last beat
    is older than BEAT_EVERY, and learns whether its hash was folded while it was away. At
    shutdown (``usage.closing``) the node then folds its own hash.
    """
    written = 0
    history_due = usage.history_due(time.monotonic())
    try:
        # The keys pending now, no more: uses that arrive meanwhile wait for the next flush.
        for _ in range(-(-max(len(usage), usage.history_pending if history_due else 0) // USAGE_CHUNK)):
            started = time.monotonic()
            if usage.beat_at is None or started - usage.beat_at >= BEAT_EVERY:
                landed = await store.ledger.beat(usage.node_id, usage.registered)
                if landed is not None:
                    log.warning("last-used data of this process was folded while it was away; carrying on")
                    usage.rebase(*landed)
                usage.registered, usage.beat_at = True, started
            batch = usage.drain(USAGE_CHUNK)
            history = usage.drain_history(USAGE_CHUNK) if history_due else None
            if batch is None and history is None:
                break
            try:
                taken = await store.ledger.write(usage.node_id, batch.seq if batch else 0,
                                                 batch.values if batch else {}, history,
                                                 gen=batch.gen if batch else 0)
            except BaseException:  # a failure or a cancellation: it may or may not have landed
                if batch is not None:
                    usage.restore(batch)
                if history is not None:
                    usage.restore_history(history)
                raise
            if batch is not None and not taken:
                # The node's hash was folded while it was away, and it did not know (its beats
                # say so first, normally): written again after the next beat and its rebase.
                log.warning("last-used write refused: this process's hash was folded; rebasing")
                usage.restore(batch)
                usage.beat_at = None
            elif batch is not None:
                usage.confirm(batch)
                written += len(batch)
            if history is not None:
                usage.confirm_history(history)
                usage.history_at = started
        # Hours, then days, that are over and fully written: into the per-key buckets (once per
        # key and hour, once per key and day).
        for hour in usage.foldable_hours(everything=usage.closing):
            if await store.ledger.fold_hour(usage.node_id, hour):
                usage.forget_hour(hour)
        for day in usage.foldable_days(everything=usage.closing):
            if await store.ledger.fold_day(usage.node_id, day):
                usage.forget_day(day)
    except FAULTS as exc:
        metrics.flushes.labels("failed").inc()
        log.warning("last-used flush failed, %d keys kept for the next try: %s", len(usage), exc)
        return False
    finally:
        metrics.usage_pending.set(len(usage))
    if written:
        metrics.flushes.labels("ok").inc()
        metrics.flush_size.observe(written)
    if usage.closing:
        await _fold_own(store, usage)
    return True


async def flush_at_shutdown(store: KeyStore, usage: UsageBuffer, metrics: Metrics) -> None:
    """Nothing lost on shutdown: the buffered last-used data goes out within a deadline
    (after the flusher was cancelled, so this flush also folds the node's hash)."""
    try:
        await asyncio.wait_for(flush_usage(store, usage, metrics), SHUTDOWN_FLUSH_DEADLINE)
    except asyncio.TimeoutError:
        log.error("last-used flush did not finish within %ss; %d keys not written",
                  SHUTDOWN_FLUSH_DEADLINE, len(usage))


async def _fold_own(store: KeyStore, usage: UsageBuffer) -> None:
    """At shutdown, after the last flush: move this node's hash into the durable base."""
    if not usage.registered:
        return  # never wrote anything
    try:
        await store.ledger.fold(usage.node_id)
        gen = await store.ledger.generation(usage.node_id)
    except FAULTS as exc:
        log.warning("could not fold this process's last-used data (another process will): %s", exc)
        return
    usage.retire(gen)


async def fold_dead_usage(store: KeyStore, max_chunks: int | None = None) -> bool:
    """Fold the usage hashes of gateway processes that died without folding their own.

    Returns False when some are left (the chunk budget ran out, or Redis failed).
    """
    try:
        done = await store.ledger.fold_dead(max_chunks=max_chunks)
        return await store.ledger.fold_dead_history(max_chunks=max_chunks) and done
    except FAULTS as exc:
        log.warning("could not fold the last-used data of stopped gateways: %s", exc)
        return False


async def usage_flusher(store: KeyStore, usage: UsageBuffer, metrics: Metrics, interval: float) -> None:
    """Flush every ``interval`` seconds until cancelled; fold what dead gateways left, too.

    Dead gateways are looked for after the first interval, then every FOLD_DEAD_EVERY seconds
    (one script call), and folded at most FOLD_DEAD_CHUNKS chunks per flush interval, so
    flushes never wait long. Not at the very start, on Redis Cluster's account. What is known:
    with the fold at the very start, test_cluster_keeps_working_while_a_slot_migrates
    (tests/integration/test_redis_topologies.py) failed 5 runs in 10 (redis-py 8.1.0), each
    logged one on the admin API's read of the key while its slot was between MIGRATING and reassigned
    (ASK): 503 store_unavailable; the gateway's own reads then passed. The admin API runs this
    flusher on the client of its request reads, so its start-up fold overlapped that read.
    redis-py's asyncio RedisCluster closes every node connection (``aclose()``) on a
    ClusterDownError or SlotNotCoveredError and on every ``reinitialize_steps``-th MOVED
    (default 5), and marks the whole client for re-initialisation on a ConnectionError; a
    command in flight on a connection closed so fails. Which of these fires here is not
    established (the 503 does not log its cause). Cancelled means shutting down: the final
    flush (by the app, after the requests finished) then also folds this node's hash.
    """
    next_fold = 0.0
    try:
        while True:
            await asyncio.sleep(interval)
            await flush_usage(store, usage, metrics)
            if time.monotonic() >= next_fold:
                done = await fold_dead_usage(store, FOLD_DEAD_CHUNKS)
                next_fold = time.monotonic() + (FOLD_DEAD_EVERY if done else interval)
    finally:
        usage.closing = True
