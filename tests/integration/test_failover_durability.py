"""An acknowledged create or revoke survives a Sentinel failover, planned or a SIGKILL of the master.

A loop of creates and revokes runs through the admin API during the failover. Once it has
settled and the old master has rejoined as a replica, every create answered 201 still exists
and works, and every revoke answered 200 is still revoked: the gateway refuses the key.
Writes answered 503 may or may not have landed; nothing is asserted about them.

Requests run through the gateway at the same time, with last-used flushes every 0.1 s: every
use answered 200 is counted exactly once on the new master and on the rejoined old master
(flushes are confirmed by a replica too, else retried), and a key used after the failover
has that use's time. Two failovers in a row: 503s only until the replica is back, and a
process that first meets a promoted master with no replica yet does not take unconfirmed writes.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time

import pytest
import redis as sync_redis

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.store import KeyStore, NotReplicated, connect
from tests.support import OPERATOR_TOKEN, wait_for
from tests.support.redis_topologies import start_sentinels

FLUSH_EVERY = 0.1  # seconds between the gateway's last-used flushes
BACK_WITHIN = 2.0  # seconds after the replica is back in sync by which admin writes are answered again


@pytest.fixture
def sentinels(tmp_path):
    s = start_sentinels(tmp_path)
    yield s
    s.stop()


class Writer:
    """Creates and revokes in a loop; remembers what was acknowledged."""

    def __init__(self, stack, victims: list[dict]) -> None:
        self.stack, self.victims = stack, list(victims)
        self.created: list[dict] = []
        self.revoked: list[dict] = []
        self.refused = 0
        self.outcomes: list[tuple[float, bool]] = []  # (monotonic start, acknowledged)
        self.stop = False

    def acknowledged(self) -> int:
        return len(self.created) + len(self.revoked)

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        i = 0
        while not self.stop:
            i += 1
            started, before = time.monotonic(), self.acknowledged()
            try:
                if i % 2 and self.victims:
                    victim = self.victims.pop()
                    async with self.stack.http.post(f"{self.stack.admin}/v1/orgs/fo/api-keys/{victim['id']}/revoke",
                                                    headers=headers) as resp:
                        if resp.status == 200:
                            self.revoked.append(victim)
                        else:
                            assert resp.status == 503, await resp.text()
                            self.refused += 1
                else:
                    async with self.stack.http.post(f"{self.stack.admin}/v1/orgs/fo/api-keys", headers=headers,
                                                    json={"name": f"k{i}", "scopes": ["tasks:read"]}) as resp:
                        body = await resp.json()
                        if resp.status == 201:
                            self.created.append(body)
                        else:
                            assert resp.status == 503, body
                            assert body["error"]["code"] in ("store_unavailable", "store_full"), body
                            self.refused += 1
            except asyncio.TimeoutError:
                self.refused += 1
            self.outcomes.append((started, self.acknowledged() > before))
            await asyncio.sleep(0.02)


class Requester:
    """Requests through the gateway with the ``using`` keys in turn; counts the uses answered 200."""

    def __init__(self, stack, using: list[dict]) -> None:
        self.stack, self.using = stack, using
        self.ok: dict[str, int] = {}
        self.unsure: dict[str, int] = {}  # no answer: the gateway may or may not have counted it
        self.stop = False

    async def run(self) -> None:
        i = 0
        while not self.stop:
            key = self.using[i % len(self.using)]
            i += 1
            try:
                status, body, _ = await self.stack.call("GET", "/v1/tasks", key["key"])
                assert status in (200, 503), (status, body)  # never a 401 or an allow of a bad key
                if status == 200:
                    self.ok[key["id"]] = self.ok.get(key["id"], 0) + 1
            except (OSError, asyncio.TimeoutError):
                self.unsure[key["id"]] = self.unsure.get(key["id"], 0) + 1
            await asyncio.sleep(0.005)


async def _flushed(stack) -> None:
    """Nothing left to flush, twice, further apart than a confirmation can take (so no flush
    was in flight that could still fail and put its keys back)."""
    for _ in range(2):
        await wait_for(lambda: len(stack.state.usage) == 0, timeout=15)
        await asyncio.sleep(0.6)
    await wait_for(lambda: len(stack.state.usage) == 0, timeout=15)


async def _check_usage(stack, ports, requester: Requester, keys: list[dict], used_at_ms: dict[str, int]) -> None:
    """Each data node counts every use answered 200 exactly once (no loss, no double count)."""
    ids = [k["id"] for k in keys]
    for port in ports:
        client = aioredis.Redis(port=port)
        try:
            usage, _ = await KeyStore(client).ledger.read(ids)
        finally:
            await client.aclose()
        for key_id in ids:
            last, count = usage[key_id]
            ok, unsure = requester.ok.get(key_id, 0), requester.unsure.get(key_id, 0)
            assert ok <= count <= ok + unsure, (port, key_id, count, ok, unsure)
            if key_id in used_at_ms:
                assert last == used_at_ms[key_id], (port, key_id, last)


def _failed_flushes(stack) -> float:
    return stack.state.metrics.flushes.labels("failed")._value.get()


def _ok_flushes(stack) -> float:
    return stack.state.metrics.flushes.labels("ok")._value.get()


async def _fail_over(sentinels, tmp_path, kill: bool) -> int:
    """Planned failover or SIGKILL of the master; returns the old master once it has resynced."""
    old = sentinels.current_master()
    if kill:
        sentinels.procs[old].send_signal(signal.SIGKILL)
    else:
        await _sentinel_failover(sentinels)
    await wait_for(lambda: sentinels.current_master() != old, timeout=20)
    if kill:
        await asyncio.sleep(0.5)
        sentinels.restart_as_replica(old, tmp_path)
    await wait_for(lambda: sentinels.replica_in_sync(old), timeout=30)
    return old


async def _sentinel_failover(sentinels) -> None:
    """SENTINEL FAILOVER, repeated while a sentinel still refuses (a failover in progress)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            with sync_redis.Redis(port=sentinels.sentinel_ports[0]) as s:
                s.execute_command("SENTINEL", "FAILOVER", sentinels.service)
            return
        except sync_redis.ResponseError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _survived(stack, sentinels, writer: Writer, ports) -> None:
    """Every acknowledged revoke is still revoked, every acknowledged create still works,
    through the gateway and on every data node."""
    assert writer.created and writer.revoked  # acknowledged writes happened, before and after
    for v in writer.revoked:
        status, body, _ = await stack.call("GET", "/v1/tasks", v["key"])
        assert status == 401 and body["error"]["code"] == "revoked_api_key", (v["id"], status, body)
    for c in writer.created:
        assert (await stack.call("GET", "/v1/tasks", c["key"]))[0] == 200, c["id"]
    for port in ports:
        with sync_redis.Redis(port=port) as node:
            assert all(node.hexists(f"gw:key:{{{v['id']}}}", "r") for v in writer.revoked), port
            assert all(node.exists(f"gw:key:{{{c['id']}}}") for c in writer.created), port


async def _start(sentinels, make_stack, victims: int):
    stack = await make_stack(redis=sentinels.url, auth_failure_limit=0, flush_interval=FLUSH_EVERY)
    targets = [await stack.create_key(org="fo", name=f"v{i}") for i in range(victims)]
    users = [await stack.create_key(org="fo", name=f"u{i}") for i in range(3)]
    for v in targets[:5]:
        assert (await stack.call("GET", "/v1/tasks", v["key"]))[0] == 200  # cached by the gateway
    # users[2]: used before the failover only; users[1] up to the end of it; users[0] after it too.
    requester = Requester(stack, users)
    for _ in range(5):
        status, _, _ = await stack.call("GET", "/v1/tasks", users[2]["key"])
        assert status == 200
    requester.ok[users[2]["id"]] = 5
    requester.using = users[:2]
    writer = Writer(stack, targets)
    tasks = [asyncio.create_task(writer.run()), asyncio.create_task(requester.run())]
    await asyncio.sleep(0.5)
    return stack, users, writer, requester, tasks


async def _finish(stack, sentinels, ports, users, writer, requester, tasks, clock) -> None:
    """After the last failover settled: users[0] used at a new time, users[1] no more; then stop,
    wait for the last flush and check writes and uses on every data node."""
    requester.using = users[:1]
    ok_flushes = _ok_flushes(stack)
    await asyncio.sleep(0.05)  # requests in flight with users[1] end
    clock.advance(60)
    ok_before = writer.acknowledged()
    await wait_for(lambda: writer.acknowledged() > ok_before + 4, timeout=15)
    writer.stop = requester.stop = True
    await asyncio.gather(*tasks)
    await _flushed(stack)
    assert _ok_flushes(stack) > ok_flushes  # the flush loop writes to the new master
    await _survived(stack, sentinels, writer, ports)
    await _check_usage(stack, ports, requester, users, {users[0]["id"]: int(clock.now * 1000)})


async def _run_failover(sentinels, make_stack, tmp_path, clock, kill: bool) -> None:
    stack, users, writer, requester, tasks = await _start(sentinels, make_stack, 120)
    failed = _failed_flushes(stack)
    old = await _fail_over(sentinels, tmp_path, kill)
    await _finish(stack, sentinels, (sentinels.current_master(), old), users, writer, requester, tasks, clock)
    if kill:
        # Uses were waiting when the master died: their flushes failed, were counted, and went
        # to the new master later (the exact counts above).
        assert _failed_flushes(stack) > failed


async def test_planned_failover_loses_no_acknowledged_write(sentinels, make_stack, tmp_path, clock):
    await _run_failover(sentinels, make_stack, tmp_path, clock, kill=False)


async def test_killed_master_loses_no_acknowledged_write(sentinels, make_stack, tmp_path, clock):
    await _run_failover(sentinels, make_stack, tmp_path, clock, kill=True)


async def _fresh_create(sentinels, clock) -> str:
    """A create by a new KeyStore (a process started now): "not replicated" or "acknowledged"
    (retried while the sentinels do not name a master yet: then nothing was written)."""
    fresh = KeyStore(connect(sentinels.url, timeout=2.0))
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                await fresh.create(org_id="fo", name="fresh", scopes=["tasks:read"], expires_at=None,
                                   actor="test", now_ms=int(clock.now * 1000))
                return "acknowledged"
            except NotReplicated:
                return "not replicated"
            except RedisConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await fresh.redis.aclose()


def _answered_after(writer: Writer, since: float, until: float) -> list[bool]:
    return [ok for started, ok in writer.outcomes if since <= started < until]


async def test_two_failovers_in_a_row(sentinels, make_stack, tmp_path, clock):
    """A planned failover, then a SIGKILL of the new master, with writes and requests throughout."""
    stack, users, writer, requester, tasks = await _start(sentinels, make_stack, 200)
    first = await _fail_over(sentinels, tmp_path, kill=False)
    synced = time.monotonic()
    ok_before = writer.acknowledged()
    await wait_for(lambda: writer.acknowledged() > ok_before + 4 and time.monotonic() > synced + BACK_WITHIN + 1,
                   timeout=15)
    second = sentinels.current_master()
    sentinels.procs[second].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await wait_for(lambda: sentinels.current_master() == first, timeout=20)

    # The promoted master has no replica yet. A process that meets it first (an admin API
    # started now) must not take unconfirmed writes: the deployment has had a replica.
    assert await _fresh_create(sentinels, clock) == "not replicated"

    await asyncio.sleep(0.5)
    sentinels.restart_as_replica(second, tmp_path)
    await wait_for(lambda: sentinels.replica_in_sync(second), timeout=30)
    resynced = time.monotonic()
    await wait_for(lambda: time.monotonic() > resynced + BACK_WITHIN + 1, timeout=5)
    await _finish(stack, sentinels, (first, second), users, writer, requester, tasks, clock)

    # 503s only while no replica was connected: from BACK_WITHIN after each resync on, and
    # until the next failover, every write was acknowledged.
    between = _answered_after(writer, synced + BACK_WITHIN, killed)
    after = _answered_after(writer, resynced + BACK_WITHIN, float("inf"))
    # A WAIT can still miss its timeout (250 ms here) on a starved 2-core machine (a CI run saw one such 503
    # between the failovers): a write refused now and then is allowed, a refusal that lasts is
    # not (a requirement that never came back down would refuse every write here).
    for answered in (between, after):
        assert answered and sum(answered) >= 0.9 * len(answered), answered
        assert not any(not a and not b for a, b in itertools.pairwise(answered)), answered  # never twice in a row


async def test_a_flush_counts_as_done_only_once_a_replica_has_it(master_and_replica, make_stack):
    """What a failover would promote is the replica: a flush the replica has not confirmed
    fails (counted, keys kept) and is written again once it is back, counts exact."""
    master, replica = master_and_replica
    await wait_for(lambda: replica.client.info("replication")["master_link_status"] == "up", timeout=10)
    stack = await make_stack(redis=master.url, flush_interval=FLUSH_EVERY)
    key = await stack.create_key(org="fo")
    assert (await stack.call("GET", "/v1/tasks", key["key"]))[0] == 200
    await _flushed(stack)
    replica.proc.send_signal(signal.SIGSTOP)  # replication stalls: writes land on the master only
    ok, failed = _ok_flushes(stack), _failed_flushes(stack)
    for _ in range(3):
        assert (await stack.call("GET", "/v1/tasks", key["key"]))[0] == 200  # reads still work
    await wait_for(lambda: _failed_flushes(stack) > failed, timeout=5)
    assert _ok_flushes(stack) == ok and len(stack.state.usage) == 1  # not counted as done: kept
    replica.proc.send_signal(signal.SIGCONT)
    await _flushed(stack)
    assert _ok_flushes(stack) > ok
    requester = Requester(stack, [key])
    requester.ok[key["id"]] = 4
    await _check_usage(stack, (master.port, replica.port), requester, [key], {})
