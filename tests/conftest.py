"""Shared fixtures: a real redis-server on a free port, a clock, and the full in-process stack.

The helpers behind them are in tests/support (import them from there, not from here).
"""

from __future__ import annotations

import pytest

from tests.support import Clock, RedisServer
# Importable from here for tests written before tests/support existed; new tests import tests.support.
from tests.support import OPERATOR_TOKEN, ROOT, SCOPES, eventually, free_port, wait_for  # noqa: F401
from tests.support.stack import Stack, echo_server, make_stack, stack  # noqa: F401  (fixtures)


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


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def oidc_install():
    """gateway/data/devidp's node_modules (npm ci once, into a cache folder outside the repo)."""
    from tests.support.oidc import install_dir

    return install_dir()


@pytest.fixture(scope="module")
def oidc_provider(oidc_install):
    """A real oidc-provider on 127.0.0.1 (tests/support/oidc.py), stopped after the module."""
    from tests.support.oidc import OidcProvider

    provider = OidcProvider(oidc_install)
    yield provider
    provider.stop()
