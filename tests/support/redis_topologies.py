"""Real Redis topologies for tests: a 3-master Redis Cluster, and a master + replica + 3 sentinels."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from gateway.dev import die_with_parent  # SIGTERM if the test run is killed
from tests.support import free_port, free_port_block

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
# A master sends a replica its first full sync at once: Redis 7 otherwise waits 5 s
# (repl-diskless-sync-delay) for more replicas to join the same transfer, at every (re)sync.
DATA_NODE = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    return free_port_block(0, 10000)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([REDIS_SERVER, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)


def _wait(check, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Cluster:
    ports: list[int]
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True)

    def node_ids(self) -> dict[int, str]:
        return {p: self.client(p).execute_command("CLUSTER MYID") for p in self.ports}

    def owner_of(self, slot: int) -> int:
        for start, end, master, *_ in self.client(self.ports[0]).execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise AssertionError(f"slot {slot} has no owner")

    def keyslot(self, key: str) -> int:
        return int(self.client(self.ports[0]).execute_command("CLUSTER KEYSLOT", key))

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def start_cluster(tmp: Path, masters: int = 3) -> Cluster:
    cluster = Cluster([cluster_port() for _ in range(masters)])
    try:
        _start_cluster(cluster, tmp)
    except BaseException:
        cluster.stop()  # nothing left running when start-up fails
        raise
    return cluster


def _start_cluster(cluster: Cluster, tmp: Path) -> None:
    for port in cluster.ports:
        cluster.procs.append(_start(["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                                     "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                                     "--save", "", "--appendonly", "no"], tmp / str(port)))
    for port in cluster.ports:
        _wait(lambda port=port: cluster.client(port).ping(), f"redis {port}")
    subprocess.run([REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{p}" for p in cluster.ports],
                    "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=30)
    for port in cluster.ports:
        _wait(lambda port=port: "cluster_state:ok" in str(cluster.client(port).execute_command("CLUSTER INFO"))
              or "'cluster_state': 'ok'" in str(cluster.client(port).execute_command("CLUSTER INFO")),
              f"cluster state ok on {port}")


def migrate_slot_begin(cluster: Cluster, slot: int) -> tuple[int, int]:
    """Put ``slot`` in the MIGRATING/IMPORTING state between its owner and another master."""
    src = cluster.owner_of(slot)
    dst = next(p for p in cluster.ports if p != src)
    ids = cluster.node_ids()
    cluster.client(dst).execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[src])
    cluster.client(src).execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[dst])
    return src, dst


def migrate_keys(cluster: Cluster, src: int, dst: int, keys: list[str]) -> None:
    cluster.client(src).execute_command("MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)


def migrate_slot_finish(cluster: Cluster, slot: int, dst: int) -> None:
    ids = cluster.node_ids()
    for port in cluster.ports:
        cluster.client(port).execute_command("CLUSTER SETSLOT", slot, "NODE", ids[dst])


@dataclass
class SentinelSetup:
    master_port: int
    replica_port: int
    sentinel_ports: list[int]
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)
    service: str = "mymaster"

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{self.service}"

    def current_master(self) -> int:
        addr = redis.Redis(port=self.sentinel_ports[0], decode_responses=True).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(addr[1])

    def restart_as_replica(self, port: int, tmp: Path) -> None:
        """Start a killed data node again, as a replica of the current master (what an operator
        or an orchestrator does; the sentinels would convert a returning old master anyway)."""
        self.procs[port].wait()
        self.procs[port] = _start(["--port", str(port), *DATA_NODE,
                                   "--replicaof", "127.0.0.1", str(self.current_master())], tmp / f"again-{port}")

    def replica_in_sync(self, port: int) -> bool:
        """``port`` replicates the current master, link up."""
        info = redis.Redis(port=port).info("replication")
        master = self.current_master()
        return (info.get("role") == "slave" and int(info.get("master_port", 0)) == master
                and info.get("master_link_status") == "up"
                and int(redis.Redis(port=master).info("replication").get("connected_slaves", 0)) >= 1)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


def start_sentinels(tmp: Path) -> SentinelSetup:
    setup = SentinelSetup(free_port(), free_port(), [free_port() for _ in range(3)])
    try:
        _start_sentinels(setup, tmp)
    except BaseException:
        setup.stop()  # nothing left running when start-up fails
        raise
    return setup


def _start_sentinels(setup: SentinelSetup, tmp: Path) -> None:
    setup.procs[setup.master_port] = _start(["--port", str(setup.master_port), *DATA_NODE], tmp / "master")
    setup.procs[setup.replica_port] = _start(["--port", str(setup.replica_port), *DATA_NODE,
                                              "--replicaof", "127.0.0.1", str(setup.master_port)], tmp / "replica")
    _wait(lambda: redis.Redis(port=setup.replica_port).info("replication")["master_link_status"] == "up",
          "replica in sync")
    # Each sentinel starts knowing the others and the replica (what a sentinel writes into its own
    # file once it has found them): without this, finding them over hello messages takes seconds.
    ids = {port: secrets.token_hex(20) for port in setup.sentinel_ports}
    for port in setup.sentinel_ports:
        conf = tmp / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nsentinel myid {ids[port]}\n"
            f"sentinel monitor {setup.service} 127.0.0.1 {setup.master_port} 2\n"
            f"sentinel down-after-milliseconds {setup.service} 500\n"
            f"sentinel failover-timeout {setup.service} 3000\n"
            f"sentinel parallel-syncs {setup.service} 1\n"
            f"sentinel known-replica {setup.service} 127.0.0.1 {setup.replica_port}\n"
            + "".join(f"sentinel known-sentinel {setup.service} 127.0.0.1 {other} {ids[other]}\n"
                      for other in setup.sentinel_ports if other != port)
        )
        setup.procs[port] = _start([str(conf), "--sentinel"], tmp / f"s{port}")
    for port in setup.sentinel_ports:
        _wait(lambda port=port: _sees_all(redis.Redis(port=port, decode_responses=True), setup.service),
              f"sentinel {port} sees the others")


def _sees_all(sentinel: redis.Redis, service: str) -> bool:
    """The sentinel has live links to the master, the replica (in sync) and the two other sentinels."""
    master = sentinel.sentinel_master(service)
    replicas = sentinel.execute_command("SENTINEL", "REPLICAS", service)
    others = sentinel.execute_command("SENTINEL", "SENTINELS", service)
    return (master["flags"] == "master" and int(master["num-other-sentinels"]) == 2
            and [(r["flags"], r["master-link-status"]) for r in replicas] == [("slave", "ok")]
            and [o["flags"] for o in others] == ["sentinel", "sentinel"])
