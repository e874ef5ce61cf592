"""Credentials: never logged or echoed, bad keys indistinguishable and cheap, failed-auth throttling."""

from __future__ import annotations

import http.client
import statistics
import time
import urllib.request

import pytest

from gateway.keys import ALPHABET, checksum, generate_key, parse_key
from tests.security.conftest import TRUSTED_PROXY, create_keys, start_gateway, stop_gateway


def redis_calls(redis_server, *commands: str) -> int:
    """Calls of ``commands`` (all but INFO/PING/CONFIG when none given) since the stats were reset."""
    stats = redis_server.client.info("commandstats")
    if commands:
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in commands)
    ignored = {"cmdstat_info", "cmdstat_ping", "cmdstat_config|resetstat", "cmdstat_config"}
    return sum(v["calls"] for k, v in stats.items() if k not in ignored)


def with_checksum_of(random_part: str) -> str:
    """A well-formed key (valid checksum) with the given 30-character random part."""
    return "sop_" + random_part + checksum("sop_" + random_part)


def bad_checksum(key: str) -> str:
    last = key[-1]
    return key[:-1] + (ALPHABET[(ALPHABET.index(last) + 1) % len(ALPHABET)])


def metric(gw, name: str) -> float:
    text = urllib.request.urlopen(gw.ops + "/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


# ---- with the shared gateway (throttle off) ----

def test_keys_in_the_query_are_refused_and_nothing_secret_is_logged(gateway):
    key = gateway.keys["reader"]["key"]
    for target in (f"/v1/tasks?api_key={key}", f"/v1/tasks?apikey={key}", f"/v1/tasks?access_token={key}",
                   f"/v1/tasks?note={key}", f"/v1/tasks?a=1&x-api-key={key}", f"/v1/status?k={key}"):
        resp = gateway.request("GET", target)
        assert resp.status == 400 and resp.json()["error"]["code"] == "api_key_in_query", target
        assert key.encode() not in resp.raw
    # A valid key in a header with a secret-looking query value: forwarded, query never logged.
    resp = gateway.request("GET", "/v1/tasks?password=hunter2-query-secret&q=x", key=key)
    assert resp.status == 200
    for bad in (generate_key(), bad_checksum(key), "sop_tooshort"):
        assert gateway.request("GET", "/v1/tasks", key=bad).status == 401
    deadline = time.monotonic() + 3  # access-log lines are written in batches
    while "/v1/tasks" not in gateway.stdout.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    logs = gateway.all_logs()
    assert key not in logs and key[:-1] not in logs and "hunter2-query-secret" not in logs
    assert "sop_tooshort" not in logs
    assert "/v1/tasks" in logs  # the log is there, just without secrets


@pytest.mark.parametrize("name, make", [
    ("unknown", lambda real: generate_key()),
    ("bad checksum", bad_checksum),
    ("too short", lambda real: real[:-1]),
    ("too long", lambda real: real + "A"),
    ("bad alphabet", lambda real: real[:10] + "-" + real[11:]),
    ("wrong prefix", lambda real: "ghp_" + real[4:]),
    ("no prefix", lambda real: real[4:]),
    ("empty bearer", lambda real: ""),
    ("unicode", lambda real: real[:-1] + "é"),
])
def test_bad_keys_get_identical_answers_that_never_echo_them(gateway, name, make):
    real = gateway.keys["reader"]["key"]
    reference = gateway.request("GET", "/v1/tasks", {"X-API-Key": generate_key()})
    guess = make(real)
    resp = gateway.request("GET", "/v1/tasks", {"X-API-Key": guess} if guess else {"Authorization": "Bearer "})
    assert resp.status == reference.status == 401

    def comparable(r):
        body = r.json()
        body["error"].pop("request_id")
        headers = {k.lower(): v for k, v in r.headers if k.lower() not in ("x-request-id", "date", "content-length")}
        return body, headers

    assert comparable(resp) == comparable(reference)
    if guess:
        assert guess.encode("utf-8") not in resp.raw


def test_a_bad_checksum_costs_zero_redis_commands(gateway, redis_server):
    real = gateway.keys["reader"]["key"]
    guesses = [bad_checksum(generate_key()) for _ in range(50)] + [bad_checksum(real)]
    redis_server.client.config_resetstat()
    for guess in guesses:
        assert gateway.request("GET", "/v1/tasks", key=guess).status == 401
    assert redis_calls(redis_server) == 0
    # In contrast, a well-formed unknown key costs one HGETALL, then none (negative cache).
    unknown = generate_key()
    for _ in range(3):
        assert gateway.request("GET", "/v1/tasks", key=unknown).status == 401
    assert redis_calls(redis_server, "hgetall") == 1


def test_response_time_does_not_depend_on_how_much_of_the_key_is_right(gateway, redis_server):
    real = gateway.keys["reader"]["key"]
    random_part = real[4:34]
    rng = __import__("random").Random(7)

    def guess(correct: int) -> str:
        tail = "".join(rng.choice(ALPHABET) for _ in range(30 - correct))
        if correct < 30 and tail[0] == random_part[correct]:
            tail = ALPHABET[(ALPHABET.index(tail[0]) + 1) % len(ALPHABET)] + tail[1:]
        return with_checksum_of(random_part[:correct] + tail)

    classes = {0: [], 15: [], 29: []}
    sent = set()
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    redis_server.client.config_resetstat()
    try:
        for _ in range(60):  # 29 correct characters leave 61 possible keys: each is tried once
            for correct, samples in classes.items():
                g = guess(correct)
                while g in sent:  # a repeat would be answered from the negative cache, faster
                    g = guess(correct)
                sent.add(g)
                assert parse_key(g)  # well formed: the request reaches the key lookup
                started = time.perf_counter()
                conn.request("GET", "/v1/tasks", headers={"Authorization": f"Bearer {g}"})
                resp = conn.getresponse()
                resp.read()
                samples.append(time.perf_counter() - started)
                assert resp.status == 401
    finally:
        conn.close()
    medians = {c: statistics.median(s) for c, s in classes.items()}
    fastest = min(medians.values())
    assert max(medians.values()) < fastest * 1.5, medians
    # Every distinct guess, however close, costs the same single lookup (repeats hit the negative cache).
    assert redis_calls(redis_server, "hgetall") == len(sent)


# ---- failed-auth throttling, on a gateway of its own ----

LIMIT = 5


@pytest.fixture(scope="module")
def throttled(redis_server, recorder, tmp_path_factory):
    redis_server.client.flushall()
    gw = start_gateway(tmp_path_factory.mktemp("throttled"), redis_server.url, recorder,
                       "--auth-failure-limit", str(LIMIT), "--auth-failure-window", "60",
                       "--throttle-max-clients", "50")
    gw.keys = create_keys(redis_server.url, {"valid": ("tasks:read",), "fresh": ("tasks:read",)})
    yield gw
    stop_gateway(gw)


def test_too_many_failures_get_429_before_any_redis_lookup(throttled, redis_server):
    source = "127.0.0.11"
    for _ in range(LIMIT):
        resp = throttled.request("GET", "/v1/tasks", key=generate_key(), source=source)
        assert resp.status == 401
    redis_server.client.config_resetstat()
    for _ in range(20):
        resp = throttled.request("GET", "/v1/tasks", key=generate_key(), source=source)
        assert resp.status == 429, resp.raw
        assert resp.json()["error"]["code"] == "too_many_failed_attempts"
        assert 1 <= int(resp.header("Retry-After")) <= 60 // LIMIT
    assert redis_calls(redis_server, "hgetall") == 0
    # Malformed keys are failures too, and are throttled the same way.
    assert throttled.request("GET", "/v1/tasks", key="sop_nonsense", source=source).status == 429
    # Other addresses are not affected.
    assert throttled.request("GET", "/v1/tasks", key=generate_key(), source="127.0.0.12").status == 401
    assert metric(throttled, "gateway_auth_throttled_total") >= 21


def test_a_known_valid_key_is_never_locked_out(throttled):
    source = "127.0.0.13"
    valid = throttled.keys["valid"]["key"]
    assert throttled.request("GET", "/v1/tasks", key=valid, source=source).status == 200
    for _ in range(LIMIT + 3):
        throttled.request("GET", "/v1/tasks", key=generate_key(), source=source)
    assert throttled.request("GET", "/v1/tasks", key=generate_key(), source=source).status == 429
    for _ in range(5):  # an attacker on the same address does not lock the real integration out
        assert throttled.request("GET", "/v1/tasks", key=valid, source=source).status == 200
    # A wrong secret for a known key id gains nothing: it is a guess like any other.
    assert throttled.request("GET", "/v1/tasks", key=bad_checksum(valid), source=source).status == 429


def test_missing_keys_and_public_routes_are_not_counted(throttled):
    source = "127.0.0.14"
    for _ in range(LIMIT * 3):
        resp = throttled.request("GET", "/v1/tasks", source=source)
        assert resp.status == 401 and resp.json()["error"]["code"] == "missing_api_key"
        assert throttled.request("GET", "/v1/status", source=source).status == 200
    assert throttled.request("GET", "/v1/tasks", key=generate_key(), source=source).status == 401


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(throttled):
    # Behind the trusted proxy, each client address has its own budget.
    for _ in range(LIMIT):
        throttled.request("GET", "/v1/tasks", {"X-Forwarded-For": "198.51.100.7"}, key=generate_key(),
                          source=TRUSTED_PROXY)
    blocked = throttled.request("GET", "/v1/tasks", {"X-Forwarded-For": "198.51.100.7"}, key=generate_key(),
                                source=TRUSTED_PROXY)
    assert blocked.status == 429
    other = throttled.request("GET", "/v1/tasks", {"X-Forwarded-For": "198.51.100.8"}, key=generate_key(),
                              source=TRUSTED_PROXY)
    assert other.status == 401
    # The client cannot pick its own address by prepending to the header.
    spoofed = throttled.request("GET", "/v1/tasks", {"X-Forwarded-For": "203.0.113.1, 198.51.100.7"},
                                key=generate_key(), source=TRUSTED_PROXY)
    assert spoofed.status == 429
    # From an untrusted peer X-Forwarded-For is ignored: rotating it does not reset the budget.
    source = "127.0.0.15"
    statuses = [throttled.request("GET", "/v1/tasks", {"X-Forwarded-For": f"192.0.2.{i}"}, key=generate_key(),
                                  source=source).status for i in range(LIMIT + 2)]
    assert statuses == [401] * LIMIT + [429, 429]


def test_throttle_memory_is_bounded(throttled):
    statuses = [throttled.request("GET", "/v1/tasks",
                                  {"X-Forwarded-For": f"203.0.113.{i % 250}, 10.{i // 250}.{i % 250}.1"},
                                  key="sop_x", source=TRUSTED_PROXY).status for i in range(300)]
    assert metric(throttled, "gateway_auth_throttle_clients") <= 50
    assert metric(throttled, "gateway_auth_throttle_evictions_total") >= 50
    # What was forgotten is not reset (gateway/throttle.py): once 300 addresses have failed
    # through a table of 50, newcomers start from the floor and are refused too.
    assert statuses[-1] == 429 and statuses.count(401) <= 300 - 50
    assert throttled.alive()


async def test_budget_comes_back_as_the_window_drains(make_stack):
    stack = await make_stack(auth_failure_limit=2, auth_failure_window=10)
    created = await stack.create_key()
    codes = [(await stack.call("GET", "/v1/tasks", generate_key()))[0] for _ in range(3)]
    assert codes == [401, 401, 429]
    status, body, resp = await stack.call("GET", "/v1/tasks", generate_key())
    assert status == 429 and resp.headers["Retry-After"] == "5"
    stack.clock.advance(5)  # one failure drains every 10 / 2 = 5 s
    assert (await stack.call("GET", "/v1/tasks", generate_key()))[0] == 401
    assert (await stack.call("GET", "/v1/tasks", generate_key()))[0] == 429
    # A valid key this process has not seen yet is also refused while the address is blocked:
    # the throttle decides before any Redis lookup. Once seen, it is never throttled.
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 429
    stack.clock.advance(10)
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
