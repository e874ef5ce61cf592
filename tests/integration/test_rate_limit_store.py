"""The limiter's Redis traffic under faults (issue 16's security review): retried calls counted
once, windows on Redis's clock, budget kept through an outage, per-key back-off, quota leases
confirmed by a replica, NOSCRIPT after a restart. In-process limiters on a real redis-server."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis as redis_sync

from gateway import errors
from gateway.leases import ADMIT, Want
from gateway.limiter import Limiter
from gateway.plans import LimitsConfig
from gateway.ratelimit import Limit, window_bounds
from gateway.store import KeyStore, Unavailable, connect
from gateway.store.limits import is_outage
from tests.support import Clock, RedisServer

# A script that keeps Redis busy: a call sent meanwhile times out (0.5 s) and redis-py retries
# it, while the first attempt still runs once Redis is free again.
BUSY = "local t0 = redis.call('TIME') repeat local t = redis.call('TIME') until (t[1] - t0[1]) * 1e6 + (t[2] - t0[2]) > tonumber(ARGV[1])"


def stall(port: int, seconds: float) -> threading.Thread:
    def run():
        redis_sync.Redis(port=port).eval(BUSY, 0, int(seconds * 1e6))
    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.05)  # the script is running
    return thread


class Record:
    def __init__(self, key_id: str, *limits: Limit) -> None:
        self.id, self.limits = key_id, (limits or None)


async def attempt(limiter: Limiter, record, cost: int = 1) -> bool:
    """One request of ``record``: admitted (True) or refused (False, 429 or 503)."""
    now = limiter.now_ms()
    entry = limiter.entry(record, now)
    decision = limiter.admit(entry, cost, now)
    try:
        if decision is not ADMIT:
            await limiter.settle(entry, decision, cost)
        return True
    except errors.ApiError:
        return False


@pytest.fixture
async def budgets(redis_url):
    client = connect(redis_url)
    yield KeyStore(client).limits
    await client.aclose()


# --- retried calls -------------------------------------------------------------------------------

async def test_a_return_retried_after_a_timeout_is_credited_once(budgets, redis_server):
    limits = {"hour": Limit("hour", 100)}
    start = window_bounds("hour", int(time.time() * 1000))[0]
    await budgets.lease("key_r", [Want("hour", start, 100)], limits)
    await budgets.give_back([("key_r", [Want("hour", start, 0)])])  # the script is loaded
    thread = stall(redis_server.port, 0.7)
    await budgets.give_back([("key_r", [Want("hour", start, 30)])])  # times out once, retried
    thread.join()
    assert await budgets.usage("key_r", list(limits.values()), start) == {"hour": 70}  # not 40


async def test_a_lease_retried_after_a_timeout_is_granted_once(budgets, redis_server):
    limits = {"hour": Limit("hour", 100)}
    start = window_bounds("hour", int(time.time() * 1000))[0]
    await budgets.lease("key_l", [Want("hour", start, 1)], limits)  # loaded
    thread = stall(redis_server.port, 0.7)
    reply = await budgets.lease("key_l", [Want("hour", start, 10)], limits)
    thread.join()
    assert reply.grants[0].amount == 10 and reply.grants[0].left == 89
    assert await budgets.usage("key_l", list(limits.values()), start) == {"hour": 11}  # not 21


async def test_after_a_script_flush_leases_and_returns_load_the_scripts_again(budgets, redis_server):
    limits = {"hour": Limit("hour", 100)}
    start = window_bounds("hour", int(time.time() * 1000))[0]
    for key_id in ("key_a", "key_b"):
        await budgets.lease(key_id, [Want("hour", start, 10)], limits)
    redis_server.client.script_flush()  # what a restarted or failed-over master has
    assert (await budgets.lease("key_a", [Want("hour", start, 5)], limits)).grants[0].amount == 5
    redis_server.client.script_flush()
    assert await budgets.give_back([("key_a", [Want("hour", start, 15)]), ("key_b", [Want("hour", start, 10)])]) == 2
    assert await budgets.usage("key_a", list(limits.values()), start) == {"hour": 0}


# --- Redis's clock ---------------------------------------------------------------------------

@pytest.mark.parametrize("skew", [-125.0, 125.0])
async def test_a_node_whose_clock_is_far_off_admits_only_the_limit(budgets, redis_server, skew):
    """Its windows were its own: 125 s behind, the counter's expiry was in the past (deleted at
    once: every request admitted); now the store refuses a window that does not hold its clock."""
    limiter = Limiter(budgets, LimitsConfig(), clock=lambda: time.time() + skew, redis_clock=True)
    record = Record("key_skew", Limit("minute", 10))
    admitted = [await attempt(limiter, record) for _ in range(60)]
    assert sum(admitted) == 10, sum(admitted)
    assert abs(limiter.offset_ms + skew * 1000) < 1000
    (name,) = redis_server.client.keys("gw:rl:{key_skew}:minute:*")
    assert redis_server.client.pttl(name) > 60_000  # the window's end plus the grace, Redis's clock


async def test_nodes_a_few_hundred_ms_apart_never_spend_two_windows_budgets_in_one_second(redis_url):
    """Two nodes 400 ms either side of Redis: before, each leased its own idea of the current
    second and up to twice the limit passed in a real one."""
    clients = [connect(redis_url) for _ in range(2)]
    nodes = [Limiter(KeyStore(c).limits, LimitsConfig(), clock=lambda s=s: time.time() + s, redis_clock=True)
             for c, s in zip(clients, (-0.4, 0.4), strict=True)]
    record = Record("key_second", Limit("second", 5))
    admits: list[float] = []

    async def hammer(limiter: Limiter) -> None:
        until = time.time() + 2.5
        while time.time() < until:
            at = time.time()
            if await attempt(limiter, record):
                admits.append(at)
            await asyncio.sleep(0.002)
    try:
        await asyncio.gather(*(hammer(n) for n in nodes))
    finally:
        for c in clients:
            await c.aclose()
    per_second: dict[int, int] = {}
    for at in admits:
        per_second[int(at)] = per_second.get(int(at), 0) + 1
    # the limit, plus at most one request per node at a boundary (the bound)
    assert max(per_second.values()) <= 5 + 2, per_second
    assert sum(per_second.values()) >= 10  # and it admits


# --- faults ----------------------------------------------------------------------------------

async def test_idle_budget_is_kept_while_redis_is_down(tmp_path):
    """An idle lease used to be released at the tick, its return failed and the budget was lost
    (a quota key then answered 503 with 1,481 units leased). Now nothing is let go while Redis
    does not answer, and the next request is admitted from what the node holds."""
    server = RedisServer(tmp_path)
    client = connect(server.url)
    clock = Clock()
    limiter = Limiter(KeyStore(client).limits, LimitsConfig(), clock=clock)
    record = Record("key_idle", Limit("day", 10_000))
    try:
        for _ in range(20):
            assert await attempt(limiter, record)
            clock.advance(0.5)
        lease = limiter.entries["key_idle"].limiter.lease("day")
        held = lease.held
        assert held > 0
        server.stop()
        clock.advance(6)  # idle (idle_ms 5 s): the tick would return the whole lease
        await limiter.return_idle()
        assert lease.held == held
        assert await attempt(limiter, record)  # not 503 quota_unavailable
        assert lease.held == held - 1
    finally:
        await client.aclose()
        if server.proc.poll() is None:
            server.stop()


async def test_one_keys_failed_lease_does_not_put_other_keys_under_the_fault_policy(tmp_path):
    """A failed lease used to set a process-wide back-off: for a second every key's lease
    failed fast and answered by the fault policy (503 for quotas), Redis back or not."""
    server = RedisServer(tmp_path)
    client = connect(server.url)
    limiter = Limiter(KeyStore(client).limits, LimitsConfig(), clock=time.time)
    try:
        server.stop()
        assert not await attempt(limiter, Record("key_one", Limit("day", 100)))  # 503: quotas fail closed
        server.start()  # back at once
        assert await attempt(limiter, Record("key_two", Limit("day", 100)))
        assert not await attempt(limiter, Record("key_one", Limit("day", 100)))  # its own back-off
    finally:
        await client.aclose()
        server.stop()


def test_a_full_pool_or_an_error_about_one_call_is_not_an_outage():
    from redis.exceptions import ConnectionError, MaxConnectionsError, ResponseError, TimeoutError
    assert not is_outage(MaxConnectionsError("Too many connections"))
    assert not is_outage(ResponseError("ERR Error running script"))
    for err in (ConnectionError("refused"), TimeoutError("timeout"), ResponseError("LOADING loading"),
                ResponseError("READONLY You can't write against a read only replica."), OSError()):
        assert is_outage(err)


async def test_a_quota_lease_needs_a_replica_once_replicas_are_required(redis_url):
    """Not replicated, a quota lease could be lost by a failover and the quota given out again:
    with required replicas it is confirmed (WAIT), or fails (the fault policy: 503 for quotas)."""
    client = connect(redis_url)
    try:
        budgets = KeyStore(client, min_replicas=1).limits
        now = int(time.time() * 1000)
        limits = {"minute": Limit("minute", 10), "day": Limit("day", 100)}
        start = {w: window_bounds(w, now)[0] for w in limits}
        reply = await budgets.lease("key_w", [Want("minute", start["minute"], 5)], limits)  # a rate: not waited for
        assert reply.grants[0].amount == 5
        with pytest.raises(Unavailable):
            await budgets.lease("key_w", [Want("day", start["day"], 5)], limits)
    finally:
        await client.aclose()


# --- the limiter's own bookkeeping -----------------------------------------------------------

async def test_the_return_loop_survives_a_failed_tick(budgets, caplog):
    limiter = Limiter(budgets, LimitsConfig())
    calls = []

    async def flaky(*, everything: bool = False) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
    limiter.return_idle = flaky
    task = asyncio.ensure_future(limiter.run(interval=0.01))
    try:
        for _ in range(200):
            if len(calls) >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert len(calls) >= 3
    assert "rate-limit return tick failed" in caplog.text


async def test_a_grant_that_lands_after_the_entry_was_dropped_goes_back(budgets):
    limiter = Limiter(budgets, LimitsConfig())
    # (A limit far above what the warm-up leases: the lease for ``cost`` below must fit in what the
    # store has left while the dropped entry's budget waits for the next tick.)
    record = Record("key_drop", Limit("hour", 1_000_000))
    for _ in range(40):  # a busy key: its leases are sized to its rate
        assert await attempt(limiter, record)
        await asyncio.sleep(0.005)
    now = limiter.now_ms()
    entry = limiter.entry(record, now)
    lease = entry.limiter.lease("hour")
    cost = lease.held + 1  # more than it holds: a lease goes out
    decision = limiter.admit(entry, cost, now)
    flight = asyncio.ensure_future(limiter.settle(entry, decision, cost))
    await asyncio.sleep(0)  # the lease is in flight
    assert 2 * cost <= 1_000_000
    limiter.entry(Record("key_drop", Limit("hour", 500_000)), now)  # limits edited: the entry is replaced
    await flight  # admitted from the lease it waited for
    assert lease.held == 0
    await limiter.return_idle()
    used = await budgets.usage("key_drop", [Limit("hour", 1)], limiter.now_ms())
    assert used == {"hour": lease.admitted}, used  # the rest of that lease went back


async def test_eviction_drops_the_least_recently_used_keys(budgets, monkeypatch):
    import gateway.limiter as limiter_mod
    monkeypatch.setattr(limiter_mod, "MAX_KEYS", 32)
    clock = Clock()
    limiter = Limiter(budgets, LimitsConfig(default=(Limit("hour", 100),)), clock=clock)
    records = [Record(f"key_{i}") for i in range(32)]
    for r in records:
        await attempt(limiter, r)
        clock.advance(1)
    await attempt(limiter, records[0])  # the oldest, used again
    await attempt(limiter, Record("key_new"))
    assert "key_0" in limiter.entries and "key_1" not in limiter.entries


async def test_a_quota_lease_is_confirmed_by_the_replica_and_fails_while_it_stalls(master_and_replica):
    import signal
    master, replica = master_and_replica
    deadline = time.monotonic() + 10
    while replica.client.info("replication")["master_link_status"] != "up":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    client = connect(master.url)
    try:
        budgets = KeyStore(client).limits  # auto: a replica is connected, so 1 is required
        now = int(time.time() * 1000)
        limits = {"minute": Limit("minute", 10), "day": Limit("day", 100)}
        start = {w: window_bounds(w, now)[0] for w in limits}
        reply = await budgets.lease("key_q", [Want("day", start["day"], 5), Want("minute", start["minute"], 5)], limits)
        assert [g.amount for g in reply.grants] == [5, 5]
        assert replica.client.get(budgets.budget_key("key_q", "day", start["day"])) == b"5"  # WAITed for
        replica.proc.send_signal(signal.SIGSTOP)
        assert (await budgets.lease("key_q", [Want("minute", start["minute"], 1)], limits)).grants[0].amount == 1
        with pytest.raises(Unavailable):  # the master granted it, no replica confirmed: not used
            await budgets.lease("key_q", [Want("day", start["day"], 5)], limits)
    finally:
        await client.aclose()


async def test_a_retried_lease_answers_the_first_reply_exactly_with_the_largest_limits(budgets, redis_server):
    from gateway.ratelimit import MAX_LIMIT
    limits = {"month": Limit("month", MAX_LIMIT)}
    start = window_bounds("month", int(time.time() * 1000))[0]
    await budgets.lease("key_big", [Want("month", start, 1)], limits)
    thread = stall(redis_server.port, 0.7)
    reply = await budgets.lease("key_big", [Want("month", start, MAX_LIMIT - 2)], limits)
    thread.join()
    assert (reply.grants[0].amount, reply.grants[0].left) == (MAX_LIMIT - 2, 1)


# --- the key's traffic on every node (lease sizing) -------------------------------------------

async def test_a_lease_answers_the_sum_of_the_fresh_rates_every_node_sent(redis_url):
    clients = [connect(redis_url) for _ in range(3)]
    nodes = [KeyStore(c).limits for c in clients]
    try:
        start = window_bounds("second", int(time.time() * 1000))[0]
        limits = {"second": Limit("second", 1_000_000)}
        sums = []
        for node, rate in zip(nodes, (300_000, 250_000, 100_000), strict=True):
            reply = await node.lease("key_s", [Want("second", start, 1, rate, 60_000)], limits, check=False)
            sums.append(reply.grants[0].rates)
        assert sums == [300_000, 550_000, 650_000]
        # A node's newer rate replaces its older one; a lease without a rate only reads the sum.
        reply = await nodes[0].lease("key_s", [Want("second", start, 1, 400_000, 60_000)], limits, check=False)
        assert reply.grants[0].rates == 750_000
        reply = await nodes[1].lease("key_s", [Want("second", start, 1, 0, 60_000)], limits, check=False)
        assert reply.grants[0].rates == 750_000
        # Rates older than the want's stale time are not counted, and are dropped from the hash.
        await asyncio.sleep(0.06)
        reply = await nodes[2].lease("key_s", [Want("second", start, 1, 200_000, 50)], limits, check=False)
        assert reply.grants[0].rates == 200_000
        raw = redis_sync.Redis.from_url(redis_url)
        rates_key = nodes[0].rates_key("key_s", "second")
        assert list(raw.hgetall(rates_key)) == [nodes[2].node.encode()]
        assert 0 < raw.pttl(rates_key) <= 50
        # The grant and the sum are per window; another window kind has its own traffic.
        reply = await nodes[0].lease("key_s", [Want("second", start, 1, 1_000, 50),
                                               Want("minute", window_bounds("minute", start)[0], 1, 7_000, 50)],
                                     {**limits, "minute": Limit("minute", 10)}, check=False)
        assert [g.rates for g in reply.grants] == [201_000, 7_000] and [g.amount for g in reply.grants] == [1, 1]
    finally:
        for c in clients:
            await c.aclose()


def test_reclaim_messages_parse_and_malformed_ones_are_ignored():
    from gateway.store.limits import parse_reclaim
    assert parse_reclaim("key_a second 1000 n1") == ("key_a", "second", 1000, "n1", None)
    assert parse_reclaim("key_a second 1000 n1 +37") == ("key_a", "second", 1000, "n1", 37)
    assert parse_reclaim("key_a second 1000 n1 +0") == ("key_a", "second", 1000, "n1", 0)
    for bad in ("", "key_a second 1000", "key_a second x n1", "key_a second 1000 n1 +", "key_a second 1000 n1 37",
                "key_a second 1000 n1 +-3", "key_a second 1000 n1 +3 extra", "key_a second -5 n1"):
        assert parse_reclaim(bad) is None, bad


async def test_a_reclaim_waits_until_the_returns_cover_what_its_requests_lack(redis_url):
    # Node B holds 1 unit and answers a reclaim at once; node C holds 5 and answers 80 ms later. Node A
    # has 3 requests waiting: woken by B's 1 unit alone, 2 of them would be refused while C's 5 are on
    # their way. The relay stands in for gateway.tasks' subscription (C's copy delayed).
    clients = [connect(redis_url) for _ in range(4)]
    a, b, c = (Limiter(KeyStore(client).limits) for client in clients[:3])
    record = Record("key_w", Limit("hour", 6))
    pubsub = clients[3].pubsub()
    await pubsub.subscribe(a.store.reclaim_channel)

    async def relay():
        async for message in pubsub.listen():
            if message["type"] == "message":
                data = message["data"].decode()
                a.on_reclaim(data)
                b.on_reclaim(data)
                asyncio.get_running_loop().call_later(0.08, c.on_reclaim, data)
    relaying = asyncio.create_task(relay())
    try:
        for node, units in ((b, 1), (c, 5)):
            now = node.now_ms()
            entry = node.entry(record, now)
            start = entry.limiter.leases[0].start
            reply = await node.store.lease(record.id, [Want("hour", start, units)], entry.by_window)
            assert entry.limiter.grant("hour", start, reply.grants[0].amount, reply.grants[0].left, now)
        results = await asyncio.gather(*(attempt(a, record) for _ in range(3)))
        assert results == [True, True, True]
        assert a.stats.reclaims_sent == 1
    finally:
        relaying.cancel()
        await pubsub.aclose()
        for client in clients:
            await client.aclose()
