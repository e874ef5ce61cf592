"""Last-used data in a real Redis: one HSET per flush, merged over nodes, folded without double counts."""

from __future__ import annotations

import asyncio

import pytest
import redis

from gateway import tasks
from gateway.metrics import Metrics
from gateway.store import KeyStore, codec, connect
from gateway.tasks import flush_usage
from gateway.usage import UsageBuffer
from tests.support import eventually

T1, T2, T3 = 1_700_000_000_000, 1_800_000_000_000, 1_900_000_000_000


@pytest.fixture
async def store(redis_url):
    s = KeyStore(connect(redis_url, timeout=2.0))
    yield s
    await s.redis.aclose()


async def make_keys(store: KeyStore, n: int, org: str = "acme") -> list[str]:
    made = await asyncio.gather(*(
        store.create(org_id=org, name=f"k{i}", scopes=["tasks:read"], expires_at=None, actor="t", now_ms=i + 1)
        for i in range(n)))
    return [record.id for record, _ in made]


async def flush(store: KeyStore, buf: UsageBuffer) -> None:
    assert await flush_usage(store, buf, Metrics())


async def usage_of(store: KeyStore, key_id: str, org: str = "acme") -> tuple[int | None, int]:
    record = await store.get_for_org(org, key_id)
    return record.last_used_at, record.request_count


def calls(redis_server) -> dict[str, int]:
    stats = redis_server.client.info("commandstats")
    return {name: v["calls"] for k, v in stats.items() if not (name := k.removeprefix("cmdstat_")).startswith("config")}


async def sent(redis_server, action) -> dict[str, int]:
    """The commands clients sent while ``action`` ran (MONITOR), without the ones scripts ran."""
    end = "usage-monitor-end"
    seen: dict[str, int] = {}
    client = redis.Redis(port=redis_server.port)
    with client.monitor() as monitor:
        def collect() -> None:
            while True:
                cmd = monitor.next_command()
                if end in cmd["command"]:
                    return
                if cmd["client_type"] != "lua":
                    name = cmd["command"].split()[0].lower()
                    seen[name] = seen.get(name, 0) + 1
        reader = asyncio.get_running_loop().run_in_executor(None, collect)
        await asyncio.sleep(0.05)  # (MONITOR is on before the action)
        await action()
        redis_server.client.echo(end)
        await reader
    client.close()
    return seen


async def test_each_flush_is_one_hset_in_a_transaction_one_history_script_and_one_zadd(store, redis_server):
    ids = await make_keys(store, 40)
    buf = UsageBuffer()
    buf.history_every = 0.0  # the history on every flush (test_usage_history: every HISTORY_EVERY s)
    buf.add(ids[0], T1)
    await flush(store, buf)  # the first flush also announces the node (one script call)
    for round_ in range(2):
        for i, key_id in enumerate(ids):
            for _ in range(i % 3 + 1):
                buf.add(key_id, T1 + round_)
        # The HSET between two small scripts in MULTI/EXEC (they keep a late write from setting
        # a total back or counting twice), the history script, and the ZADD XX GT of the
        # key-event finder's index by last use (gateway.store.finder) for the keys this process
        # has not raised there within the hour (the 39 others' first use: the first round only).
        expected = {"multi": 1, "eval": 3, "hset": 1, "exec": 1, **({"zadd": 1} if round_ == 0 else {})}
        assert await sent(redis_server, lambda: flush(store, buf)) == expected, round_
    assert await sent(redis_server, lambda: flush(store, buf)) == {}  # nothing used since: nothing sent


async def test_flushes_write_the_changed_totals_in_chunks(store, redis_server, monkeypatch):
    ids = await make_keys(store, 40)
    buf = UsageBuffer()
    buf.history_every = 0.0  # the history on every flush (test_usage_history: every HISTORY_EVERY s)
    buf.add(ids[0], T1)
    await flush(store, buf)  # the first flush also announces the node (one script call)
    for round_ in range(3):
        for i, key_id in enumerate(ids):
            for _ in range(i % 3 + 1):
                buf.add(key_id, T1 + round_)
        redis_server.client.config_resetstat()
        await flush(store, buf)
        # 40 keys, 80 requests: one HSET (its transaction's two scripts, and one history script,
        # whose own HSETs count here too: the test above counts what the client sends)
        assert calls(redis_server)["exec"] == 1 and calls(redis_server)["eval"] == 3, round_
    redis_server.client.config_resetstat()
    await flush(store, buf)  # nothing used since: nothing sent
    assert calls(redis_server) == {}
    assert await usage_of(store, ids[5]) == (T1 + 2, 9)

    monkeypatch.setattr(tasks, "USAGE_CHUNK", 16)  # big flushes are split so Redis is never blocked long
    for key_id in ids:
        buf.add(key_id, T2)
    redis_server.client.config_resetstat()
    await flush(store, buf)
    assert calls(redis_server)["exec"] == 3  # three rounds of one HSET (and the scripts)
    assert await usage_of(store, ids[39]) == (T2, 4)


async def test_two_nodes_merge_and_a_late_flush_never_moves_last_used_back(store):
    (key_id,) = await make_keys(store, 1)
    a, b = UsageBuffer("gw_a"), UsageBuffer("gw_b")
    for _ in range(3):
        a.add(key_id, T2)
    await flush(store, a)
    for _ in range(2):
        b.add(key_id, T1)  # an older use, flushed later by another process
    await flush(store, b)
    assert await usage_of(store, key_id) == (T2, 5)
    a.add(key_id, T1)  # and a late, older use on the first one
    await flush(store, a)
    assert await usage_of(store, key_id) == (T2, 6)
    listed = (await store.list("acme")).records
    assert [(r.last_used_at, r.request_count) for r in listed] == [(T2, 6)]


async def test_shutdown_folds_the_node_hash_into_the_base(store):
    ids = await make_keys(store, 3)
    buf = UsageBuffer("gw_leaving")
    for i, key_id in enumerate(ids):
        for _ in range(i + 1):
            buf.add(key_id, T1 + i)
    await flush(store, buf)
    assert not await folded(store, buf.node_id)
    buf.closing = True  # what the flusher task sets when it is cancelled at shutdown
    buf.add(ids[0], T3)  # a last request before the final flush
    await flush(store, buf)
    assert await folded(store, buf.node_id)
    assert await store.redis.zscore(store.ledger.nodes, buf.node_id) is None
    # The base holds it where codec.usage_bucket says (the Lua fold computed the same bucket).
    bucket, field = codec.usage_bucket(ids[0])
    assert await store.redis.hget(store.ledger.base_prefix + bucket, field) == f"{T3}:2".encode()
    assert [await usage_of(store, k) for k in ids] == [(T3, 2), (T1 + 1, 2), (T1 + 2, 3)]


async def test_a_dead_nodes_hash_is_folded_once_by_whoever_notices(store, monkeypatch):
    ids = await make_keys(store, 7)
    dead, alive = UsageBuffer("gw_dead"), UsageBuffer("gw_alive")
    for i, key_id in enumerate(ids):
        for _ in range(i + 1):
            dead.add(key_id, T1 + i)
        alive.add(key_id, T2)
    await flush(store, dead)
    await flush(store, alive)
    expected = [(T2, i + 2) for i in range(7)]
    assert [await usage_of(store, k) for k in ids] == expected

    store.ledger.fold_after_ms = 300
    await asyncio.sleep(0.4)
    alive.beat_at = None  # the live node beats with its next flush (at most a minute apart)
    alive.add(ids[0], T2)
    await flush(store, alive)
    expected[0] = (T2, 3)
    assert await store.ledger.dead_nodes() == ["gw_dead"]
    assert not await store.ledger.fold("gw_alive", only_if_idle=True)  # a live node is never folded

    # A chunk at a time, with reads in between: every read sees each use exactly once.
    monkeypatch.setattr("gateway.store.ledger.FOLD_CHUNK", 2)
    steps = 0
    while not await store.ledger.fold("gw_dead", only_if_idle=True, max_chunks=1):
        steps += 1
        merged, _ = await store.ledger.read(ids)  # the merge alone (an admin read would fold too)
        assert [merged[k] for k in ids] == expected
    assert steps == 3
    assert await folded(store, "gw_dead")
    assert not await folded(store, "gw_alive")
    assert [await usage_of(store, k) for k in ids] == expected
    assert await store.ledger.fold_dead() and await store.ledger.dead_nodes() == []  # nothing left
    assert [await usage_of(store, k) for k in ids] == expected  # and nothing counted twice


async def test_the_admin_read_folds_dead_nodes(store):
    (key_id,) = await make_keys(store, 1)
    gone = UsageBuffer("gw_gone")
    gone.add(key_id, T1)
    await flush(store, gone)
    store.ledger.fold_after_ms = 100
    await asyncio.sleep(0.2)
    assert [(r.last_used_at, r.request_count) for r in (await store.list("acme")).records] == [(T1, 1)]
    assert await folded(store, "gw_gone")  # folded by that read
    assert await usage_of(store, key_id) == (T1, 1)


async def test_a_running_gateway_folds_what_dead_ones_left(redis_url, make_stack, monkeypatch):
    monkeypatch.setattr("gateway.store.ledger.FOLD_AFTER_MS", 100)
    probe = KeyStore(connect(redis_url, timeout=2.0))
    try:
        (key_id,) = await make_keys(probe, 1)
        crashed = UsageBuffer("gw_crashed")
        for _ in range(4):
            crashed.add(key_id, T1)
        await flush(probe, crashed)
        await asyncio.sleep(0.2)
        stack = await make_stack(flush_interval=0.2)  # the first look is after one interval
        await eventually(lambda: folded(probe, "gw_crashed"))
        assert await usage_of(stack.store, key_id) == (T1, 4)
    finally:
        await probe.redis.aclose()


async def folded(store: KeyStore, node_id: str) -> bool:
    """The node's hash holds only its marker (the next generation, ``^``) now, with an expiry."""
    name = store.ledger.node_key(node_id)
    return set(await store.redis.hkeys(name)) == {b"^"} and await store.redis.pttl(name) > 0


async def test_a_node_folded_while_away_carries_on_without_counting_twice(store):
    (key_id,) = await make_keys(store, 1)
    buf = UsageBuffer("gw_sleepy")
    for _ in range(3):
        buf.add(key_id, T1)
    await flush(store, buf)
    store.ledger.fold_after_ms = 100
    await asyncio.sleep(0.2)
    assert await store.ledger.fold_dead()  # it looked dead (say, a long partition)
    assert await folded(store, "gw_sleepy")
    for _ in range(2):
        buf.add(key_id, T2)
    buf.beat_at = None  # its last beat is long ago: it beats before writing
    await flush(store, buf)
    assert await usage_of(store, key_id) == (T2, 5)  # not 3 + 5
    assert await store.redis.zscore(store.ledger.nodes, "gw_sleepy") is not None  # registered again
    assert not await store.redis.hexists(store.ledger.folded, "gw_sleepy")


async def test_usage_of_many_keys_reads_in_one_round_trip_per_page(store, redis_server):
    ids = await make_keys(store, 30)
    for n in range(3):
        buf = UsageBuffer(f"gw_{n}")
        for key_id in ids:
            buf.add(key_id, T1 + n)
        await flush(store, buf)
    redis_server.client.config_resetstat()
    page = await store.list("acme", limit=30)
    assert {(r.last_used_at, r.request_count) for r in page.records} == {(T1 + 2, 3)}
    assert calls(redis_server)["evalsha"] == 1  # one usage read for the whole page, over 3 nodes


async def test_a_gateway_process_has_one_node_id_for_the_registry_and_the_ledger(stack):
    # The id a gateway registers (and acknowledges revocations with) is the one its usage hash
    # is named by, so both name the same process in Redis.
    created = await stack.create_key(scopes=["tasks:read"])
    status, body, _ = await stack.call("GET", "/v1/tasks", created["key"])
    assert status == 200, body
    await flush(stack.state.background, stack.state.usage)
    store = stack.state.store
    registered = {m.decode() for m in await store.redis.zrange(store.registry, 0, -1)}
    in_ledger = {m.decode() for m in await store.redis.zrange(store.ledger.nodes, 0, -1)}
    assert stack.state.usage.node_id in in_ledger
    assert registered == {stack.state.usage.node_id}


async def replay(store: KeyStore, node_id: str, batch) -> None:
    """Redis runs ``batch`` now: the same script call as the flush that sent it, whose answer was lost."""
    await store.ledger.write(node_id, batch.seq, batch.values, gen=batch.gen)


async def test_a_lost_answer_write_that_redis_runs_late_never_sets_back_nor_counts_twice(store):
    """A flush whose answer was lost (a timeout: redis-py sends it once more, and the first may be
    queued somewhere still) and that Redis runs after the retry and a newer write, then after the
    node's hash was folded while it was away, then after its own fold at shutdown."""
    a, b = await make_keys(store, 2)
    buf = UsageBuffer("gw_lost")
    buf.add(a, T1)
    await flush(store, buf)
    buf.add(a, T2)
    buf.add(b, T2)
    lost = buf.drain()  # sent; its answer never came
    buf.restore(lost)
    buf.add(a, T3)
    await flush(store, buf)  # the retry, with the newer use
    for _ in range(2):  # run late, once or twice: the totals it carries are older
        await replay(store, buf.node_id, lost)
        assert (await usage_of(store, a), await usage_of(store, b)) == ((T3, 3), (T2, 1))
    store.ledger.fold_after_ms = 100
    await asyncio.sleep(0.2)
    assert await store.ledger.fold_dead()  # it looked dead (say, a long partition)
    await replay(store, buf.node_id, lost)  # after the fold: refused, the hash is not recreated
    assert await folded(store, "gw_lost")
    buf.add(b, T3)
    buf.beat_at = None  # it comes back: it beats, learns of the fold, and writes what had not landed
    await flush(store, buf)
    await replay(store, buf.node_id, lost)
    assert (await usage_of(store, a), await usage_of(store, b)) == ((T3, 3), (T3, 2))

    buf.add(a, T3 + 1)
    lost_again = buf.drain()
    buf.restore(lost_again)
    await flush(store, buf)  # the retry
    buf.closing = True
    await flush(store, buf)  # shutdown: the node folds its own hash
    assert await folded(store, "gw_lost")
    for late in (lost_again, lost):
        await replay(store, buf.node_id, late)
        assert await folded(store, "gw_lost")
        assert (await usage_of(store, a), await usage_of(store, b)) == ((T3 + 1, 4), (T3, 2))
    buf.closing = False
    buf.add(b, T3 + 2)  # used again (a new generation): counted once
    await flush(store, buf)
    await replay(store, buf.node_id, lost_again)
    assert (await usage_of(store, a), await usage_of(store, b)) == ((T3 + 1, 4), (T3 + 2, 3))
    assert not await store.redis.exists(store.ledger.late_key("gw_lost"))  # (only inside a transaction)


async def test_a_write_refused_as_folded_is_written_again_after_the_beat(store):
    """A node whose hash was folded while it was away writes before its next beat (which it does
    once a minute, and a fold needs ten of silence: not expected, but nothing may be lost)."""
    (a,) = await make_keys(store, 1)
    buf = UsageBuffer("gw_unaware")
    buf.add(a, T1)
    await flush(store, buf)
    store.ledger.fold_after_ms = 100
    await asyncio.sleep(0.2)
    assert await store.ledger.fold_dead()
    buf.add(a, T2)
    await flush(store, buf)  # refused: kept, and the next flush beats first
    assert len(buf) == 1 and buf.beat_at is None
    await flush(store, buf)
    assert len(buf) == 0 and await usage_of(store, a) == (T2, 2)
