"""An acknowledged create or revoke survives a Sentinel failover, planned or a SIGKILL of the master.

A loop of creates and revokes runs through the admin API during the failover. Once it has
settled and the old master has rejoined as a replica, every create answered 201 still exists
and works, and every revoke answered 200 is still revoked: the gateway refuses the key.
Writes answered 503 may or may not have landed; nothing is asserted about them.
"""

from __future__ import annotations

import asyncio
import signal

import pytest
import redis as sync_redis

from tests.support import wait_for
from tests.support.redis_topologies import start_sentinels
from tests.support import OPERATOR_TOKEN


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
        self.stop = False

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        i = 0
        while not self.stop:
            i += 1
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
            await asyncio.sleep(0.02)


async def _run_failover(sentinels, make_stack, tmp_path, kill: bool) -> Writer:
    stack = await make_stack(redis=sentinels.url, auth_failure_limit=0)
    victims = [await stack.create_key(org="fo", name=f"v{i}") for i in range(120)]
    for v in victims[:5]:
        assert (await stack.call("GET", "/v1/tasks", v["key"]))[0] == 200  # cached by the gateway
    old = sentinels.current_master()
    writer = Writer(stack, victims)
    task = asyncio.create_task(writer.run())
    await asyncio.sleep(0.5)
    if kill:
        sentinels.procs[old].send_signal(signal.SIGKILL)
    else:
        with sync_redis.Redis(port=sentinels.sentinel_ports[0]) as s:
            s.execute_command("SENTINEL", "FAILOVER", sentinels.service)
    await wait_for(lambda: sentinels.current_master() != old, timeout=20)
    if kill:
        await asyncio.sleep(0.5)
        sentinels.restart_as_replica(old, tmp_path)
    await wait_for(lambda: sentinels.replica_in_sync(old), timeout=30)
    ok_before = len(writer.created) + len(writer.revoked)
    await wait_for(lambda: len(writer.created) + len(writer.revoked) > ok_before + 4, timeout=15)
    writer.stop = True
    await task

    assert writer.created and writer.revoked  # acknowledged writes happened, before and after
    for v in writer.revoked:
        status, body, _ = await stack.call("GET", "/v1/tasks", v["key"])
        assert status == 401 and body["error"]["code"] == "revoked_api_key", (v["id"], status, body)
    for c in writer.created:
        assert (await stack.call("GET", "/v1/tasks", c["key"]))[0] == 200, c["id"]
    # What the gateway said is what the data nodes hold, the rejoined old master included.
    for port in (sentinels.current_master(), old):
        with sync_redis.Redis(port=port) as node:
            assert all(node.hexists(f"gw:key:{{{v['id']}}}", "r") for v in writer.revoked), port
            assert all(node.exists(f"gw:key:{{{c['id']}}}") for c in writer.created), port
    return writer


async def test_planned_failover_loses_no_acknowledged_write(sentinels, make_stack, tmp_path):
    await _run_failover(sentinels, make_stack, tmp_path, kill=False)


async def test_killed_master_loses_no_acknowledged_write(sentinels, make_stack, tmp_path):
    await _run_failover(sentinels, make_stack, tmp_path, kill=True)
