"""Redis URLs: standalone, Sentinel and Cluster, with errors that never show the password."""

from __future__ import annotations

import pytest

from gateway.store import RedisTarget, parse_redis_url, redact_redis_url


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6379/0", RedisTarget("standalone", "redis://127.0.0.1:6379/0")),
    ("rediss://:pw@h:6380/2", RedisTarget("standalone", "rediss://:pw@h:6380/2")),
    ("unix:///run/redis.sock", RedisTarget("standalone", "unix:///run/redis.sock")),
    ("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster",
     RedisTarget("sentinel", "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster",
                 (("10.0.0.1", 26379), ("10.0.0.2", 26379)), "mymaster")),
    ("redis+sentinel://:s%40cret@h:26379/mymaster/3",
     RedisTarget("sentinel", "redis+sentinel://:s%40cret@h:26379/mymaster/3", (("h", 26379),), "mymaster", 3,
                 None, "s@cret")),
    ("redis+sentinel://gw:pw@h:26379/m",
     RedisTarget("sentinel", "redis+sentinel://gw:pw@h:26379/m", (("h", 26379),), "m", 0, "gw", "pw")),
    ("redis+cluster://a:7000,b:7001,[::1]:7002",
     RedisTarget("cluster", "redis+cluster://a:7000,b:7001,[::1]:7002", (("a", 7000), ("b", 7001), ("::1", 7002)))),
])
def test_parse(url, expected):
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize("url, fragment", [
    ("127.0.0.1:6379", "expected a URL"),
    ("http://h:1", "unknown scheme"),
    ("redis+sentinel://h:26379", "service name"),
    ("redis+sentinel://h/mymaster", "host:port"),
    ("redis+sentinel://:topsecret@h:x/mymaster", "host:port"),
    ("redis+sentinel://h:26379/m/x", "database number"),
    ("redis+cluster://h:7000/0", "no path"),
    ("redis+cluster://:topsecret@h", "host:port"),
])
def test_errors_are_clear_and_never_show_the_password(url, fragment):
    with pytest.raises(ValueError) as info:
        parse_redis_url(url)
    assert fragment in str(info.value) and "topsecret" not in str(info.value)


@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:topsecret@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://gw:top:sec@ret@h:6380", "rediss://gw:***@h:6380"),
    ("redis://gw@h:6379", "redis://gw@h:6379"),  # a user name alone is not a secret
    ("redis://:pa/ss@h:6379/0", "redis://:***@h:6379/0"),
    ("redis+sentinel://:topsecret@a:26379,b:26379/mymaster", "redis+sentinel://:***@a:26379,b:26379/mymaster"),
    ("unix:///run/redis.sock?db=1&password=topsecret", "unix:///run/redis.sock?db=1&password=***"),
])
def test_redacted_url_never_shows_the_password(url, shown):
    assert redact_redis_url(url) == shown
