"""Shared fixtures: a real redis-server on a free port, a real echo upstream, real gateways."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
SCOPES = ROOT / "scopes.yaml"
OPERATOR_TOKEN = "test-operator-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process owned by the tests."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required (make test installs it)"
        self.port = free_port()
        self.dir = tmp
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.client.flushall()
    redis_server.client.config_resetstat()
    return redis_server.url


class Clock:
    """An injectable wall clock (seconds), so expiry is tested without waiting for days."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


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


# The full-stack fixtures (used by tests/integration and tests/browser). Imported last: tests.stack
# imports the helpers above.
from tests.stack import Stack, echo_server, make_stack, stack  # noqa: E402,F401
