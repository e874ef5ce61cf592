"""Fixtures of the integration tests that need a Redis topology: one per test module."""

from __future__ import annotations

import pytest

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
