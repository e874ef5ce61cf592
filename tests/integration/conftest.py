"""Fixtures of the integration tests that need a Redis topology: one per test module."""

from __future__ import annotations

import signal

import pytest

from tests.support import RedisServer
from tests.support.redis_topologies import start_cluster, start_sentinels


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory):
    s = start_sentinels(tmp_path_factory.mktemp("sentinel"))
    yield s
    s.stop()


@pytest.fixture
def master_and_replica(tmp_path):
    """A redis-server and its replica (SIGSTOP the replica to stall replication)."""
    (tmp_path / "m").mkdir()
    (tmp_path / "r").mkdir()
    master = RedisServer(tmp_path / "m")
    replica = RedisServer(tmp_path / "r", "--replicaof", "127.0.0.1", str(master.port))
    yield master, replica
    for node in (replica, master):
        node.proc.send_signal(signal.SIGCONT)
        node.stop()
