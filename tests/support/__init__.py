"""What every test tree shares: paths, the operator token, free ports, a real redis-server, a clock, polling.

The fixtures built on these live in tests/conftest.py; the full in-process stack in
tests/support/stack.py; raw HTTP over a socket in tests/support/rawhttp.py; Sentinel and Cluster
topologies in tests/support/redis_topologies.py.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import redis

ROOT = Path(__file__).resolve().parent.parent.parent
SCOPES = ROOT / "scopes.yaml"
OPERATOR_TOKEN = "test-operator-token-0123456789"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, drawn from 10000-19999: below Linux's
    ephemeral range (32768-60999), so that no outgoing connection (this suite's Redis clients,
    another process's) is given it between this call and the listener's bind, as a port the
    kernel picks with bind(0) could be (CI failed so: "address already in use"); never the same
    port twice in one process, and apart from free_port_block's bases (20000-29999)."""
    for _ in range(1000):
        port = random.randint(10000, 19999)
        if port not in _HANDED_OUT and bindable(port):
            _HANDED_OUT.add(port)
            return port
    raise AssertionError("no free port in 10000-19999")


def free_port_block(*offsets: int) -> int:
    """A port ``base`` with ``base + offset`` free for every offset: for `gateway dev --port` (+1, +2,
    +10, +11) and a Redis Cluster node's bus port (+10000). Bases are drawn from 20000-29999, below
    Linux's ephemeral range (32768-60999), so that an outgoing connection of another process cannot
    take one of these ports between this check and the listeners' bind."""
    for _ in range(1000):
        base = random.randint(20000, 29999)
        if all(bindable(base + off) for off in offsets):
            return base
    raise AssertionError(f"no free block of ports at offsets {offsets}")


def bindable(port: int) -> bool:
    """Whether a listener could bind ``port`` on 127.0.0.1 now (with SO_REUSEADDR, as listeners bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisServer:
    """A redis-server process owned by the tests."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required (make test installs it)"
        self.port = free_port()
        self.dir = tmp
        # --repl-diskless-sync-delay 0: a replica of this server gets its first sync at once, not 5 s later.
        self.argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--repl-diskless-sync-delay", "0", "--dir", str(tmp), *extra]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        """Start the server (again, after ``stop``: same port and flags, empty without persistence)."""
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(10)


class Clock:
    """An injectable wall clock (seconds), so expiry is tested without waiting for days."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition that is set by another task (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def eventually(check, timeout: float = 5.0):
    """Await ``check()`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
