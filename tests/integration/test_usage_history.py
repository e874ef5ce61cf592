"""Usage history with a real Redis and the real stack: outcome classes, UTC buckets, exact flushes, retention."""

from __future__ import annotations

import datetime as dt
import statistics
import json
import time

from gateway.history import DAY_MS, Window
from gateway.metrics import Metrics
from gateway.model import rfc3339
from gateway.store import KeyStore, connect
from gateway.tasks import flush_usage
from gateway.usage import HISTORY_EVERY, HOUR_MS, HistoryWrite, UsageBuffer
from tests.integration.test_cli import gateway
from tests.integration.test_forward_auth import check, nginx
from tests.integration.test_redis_faults import own_redis  # noqa: F401  (fixture)

NOON = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc).timestamp()  # a UTC hour's start (s)
ZERO = {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "refused": 0}


def at_hour(stack, hour_s: float, minute: int) -> None:
    stack.clock.now = hour_s + minute * 60


async def usage(stack, key_id: str, token=None, org: str = "acme", **query) -> dict:
    kw = {} if token is None else {"token": token}
    status, body, _ = await stack.admin_call("GET", f"/v1/orgs/{org}/api-keys/{key_id}/usage", params=query, **kw)
    assert status == 200, body
    return body


async def flush_gateway(stack) -> None:
    assert await flush_usage(stack.state.background, stack.state.usage, stack.state.metrics)


async def test_every_outcome_class_through_the_proxy_lands_in_its_utc_hour(stack):
    key = await stack.create_key(scopes=("tasks:read",))
    at_hour(stack, NOON, 59)  # 12:59 UTC
    calls = [("GET", "/v1/tasks"), ("GET", "/v1/tasks?status=302"), ("GET", "/v1/tasks?status=404"),
             ("GET", "/v1/tasks?status=429"), ("GET", "/v1/tasks?status=500"),
             ("POST", "/v1/tasks"),  # 403 insufficient scope
             ("GET", "/v1/nope"),  # 404 no route
             ("DELETE", "/v1/tasks")]  # 405
    statuses = [(await stack.call(m, p, key["key"], allow_redirects=False))[0] for m, p in calls]
    assert statuses == [200, 302, 404, 429, 500, 403, 404, 405]
    at_hour(stack, NOON + 3600, 0)  # 13:00 UTC: the next hour
    assert (await stack.call("GET", "/v1/tasks", key["key"]))[0] == 200
    await flush_gateway(stack)
    body = await usage(stack, key["id"], **{"from": "2026-11-30T11:00:00Z", "to": "2026-11-30T14:00:00Z"})
    assert body["granularity"] == "hour" and body["key_id"] == key["id"]
    assert [b["start"] for b in body["buckets"]] == [
        "2026-11-30T11:00:00.000Z", "2026-11-30T12:00:00.000Z", "2026-11-30T13:00:00.000Z"]
    assert body["buckets"][0] == {"start": "2026-11-30T11:00:00.000Z", **ZERO}
    assert body["buckets"][1] == {"start": "2026-11-30T12:00:00.000Z", "2xx": 1, "3xx": 1, "4xx": 2, "5xx": 1,
                                  "refused": 3}
    assert body["buckets"][2] == {"start": "2026-11-30T13:00:00.000Z", **ZERO, "2xx": 1}
    assert body["totals"] == {"2xx": 2, "3xx": 1, "4xx": 2, "5xx": 1, "refused": 3}
    status, listed, _ = await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{key['id']}")
    assert listed["request_count"] == 9  # last used and the count, as before


async def test_day_granularity_sums_the_hours_of_each_utc_day(stack):
    key = await stack.create_key()
    for hour_s, n in ((NOON, 2), (NOON + 11 * 3600 + 1800, 1), (NOON + 12 * 3600, 4)):  # 12:00, 23:30, next 00:00
        stack.clock.now = hour_s
        for _ in range(n):
            assert (await stack.call("GET", "/v1/tasks", key["key"]))[0] == 200
    await flush_gateway(stack)
    body = await usage(stack, key["id"], granularity="day",
                       **{"from": "2026-11-29T00:00:00Z", "to": "2026-12-02T00:00:00Z"})
    assert [(b["start"], b["2xx"]) for b in body["buckets"]] == [
        ("2026-11-29T00:00:00.000Z", 0), ("2026-11-30T00:00:00.000Z", 3), ("2026-12-01T00:00:00.000Z", 4)]
    # Defaults: to = now (2026-12-01T00:00), from = 24 hours before, hour by hour; to is excluded.
    default = await usage(stack, key["id"])
    assert default["granularity"] == "hour" and len(default["buckets"]) == 24
    assert default["from"] == "2026-11-30T00:00:00.000Z" and default["totals"]["2xx"] == 3


async def test_forward_auth_counts_its_own_answer(make_stack):
    auth = await make_stack(mode="forward-auth", upstream="")
    key = await auth.create_key(scopes=("tasks:read",))
    at_hour(auth, NOON, 5)
    assert (await check(auth, nginx("GET", "/v1/tasks", key["key"])))[0] == 200
    assert (await check(auth, nginx("POST", "/v1/tasks", key["key"])))[0] == 403
    assert (await check(auth, nginx("GET", "/v1/nope", key["key"])))[0] == 404
    assert (await check(auth, nginx("GET", "/v1/tasks", "sop_" + "x" * 36)))[0] == 401  # not authenticated
    await flush_gateway(auth)
    body = await usage(auth, key["id"], **{"from": "2026-11-30T12:00:00Z", "to": "2026-11-30T13:00:00Z"})
    assert body["totals"] == {**ZERO, "2xx": 1, "refused": 2}


async def test_the_admin_api_counts_org_keys_by_outcome(stack):
    reader = await stack.create_key(scopes=("api_keys:read",))
    at_hour(stack, NOON, 30)
    token = reader["key"]
    assert (await stack.admin_call("GET", "/v1/me", token=token))[0] == 200
    assert (await stack.admin_call("GET", "/v1/orgs/other/api-keys", token=token))[0] == 404  # another org
    assert (await stack.admin_call("POST", "/v1/orgs/acme/api-keys", token=token,
                                   json={"name": "x", "scopes": ["tasks:read"], "expires_in": "never"}))[0] == 403
    assert (await stack.admin_call("GET", "/v1/orgs/acme/api-keys?limit=0", token=token))[0] == 400
    admin = stack.admin_state
    assert await flush_usage(admin.store, admin.usage, admin.metrics)
    body = await usage(stack, reader["id"], **{"from": "2026-11-30T12:00:00Z", "to": "2026-11-30T13:00:00Z"})
    assert body["totals"] == {**ZERO, "2xx": 1, "4xx": 1, "refused": 2}


async def test_usage_queries_are_validated_and_kept_to_the_org(stack):
    key = await stack.create_key()
    other = await stack.create_key(org="other", scopes=("api_keys:read",))
    base = f"/v1/orgs/acme/api-keys/{key['id']}/usage"
    for query, field in (({"granularity": "week"}, "granularity"), ({"from": "yesterday"}, "from"),
                         ({"from": "2026-11-30T10:00:00"}, "from"),  # no time zone
                         ({"from": "2026-11-30T10:00:00Z", "to": "2026-11-30T10:00:00Z"}, "from"),
                         ({"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "granularity": "hour"}, "to"),
                         ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to")):
        status, body, _ = await stack.admin_call("GET", base, params=query)
        assert status == 400 and body["error"]["field"] == field, (query, body)
    stack.clock.now = NOON
    status, body, _ = await stack.admin_call("GET", base, params={"from": "2026-06-01T00:00:00Z",
                                                                 "to": "2026-06-02T00:00:00Z"})
    assert status == 400 and "kept 90 days" in body["error"]["message"]  # hourly retention: ask for days
    assert (await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{other['id']}/usage"))[0] == 404
    assert (await stack.admin_call("GET", base, token=other["key"]))[0] == 404  # another org's key
    assert (await stack.admin_call("GET", "/v1/orgs/acme/api-keys/key_0000000000000000/usage"))[0] == 404


async def test_a_flush_that_failed_is_retried_and_counted_once(own_redis):  # noqa: F811
    store = KeyStore(connect(own_redis.url, timeout=0.2))
    reader = KeyStore(connect(own_redis.url, timeout=2.0))  # the checks: not the flushes' short timeout
    key_id = "key_" + "a" * 16
    hour = int(NOON * 1000)
    win = Window("hour", hour, hour + HOUR_MS)
    try:
        buf = UsageBuffer()
        buf.history_every = 0.0  # every flush writes the history (the retries are the point here)
        buf.add(key_id, hour + 1)
        assert await flush_usage(store, buf, Metrics())
        # Landed late: Redis stopped (SIGSTOP) while the write was sent, ran it once resumed.
        buf.add(key_id, hour + 2, 3)
        own_redis.pause()
        try:
            assert not await flush_usage(store, buf, Metrics())
        finally:
            own_redis.resume()
        assert (await reader.ledger.history(key_id, win))[hour // HOUR_MS] == [1, 0, 0, 1, 0]  # it ran after all
        buf.add(key_id, hour + 3, 4)
        assert await flush_usage(store, buf, Metrics())  # the retry is skipped, then the new use goes
        assert await flush_usage(store, buf, Metrics())
        assert (await reader.ledger.history(key_id, win))[hour // HOUR_MS] == [1, 0, 0, 1, 1]
        # Never landed: Redis down, then back (AOF) for the retry.
        buf.add(key_id, hour + 4, 0)
        own_redis.kill()
        assert not await flush_usage(store, buf, Metrics())
        own_redis.start()
        await store.redis.connection_pool.disconnect()
        await reader.redis.connection_pool.disconnect()
        assert await flush_usage(store, buf, Metrics())
        assert (await reader.ledger.history(key_id, win))[hour // HOUR_MS] == [2, 0, 0, 1, 1]
    finally:
        await store.redis.aclose()
        await reader.redis.aclose()


async def test_a_lost_answer_write_that_redis_runs_after_newer_ones_changes_nothing(redis_url):
    """A flush whose answer was lost (a timeout: it may be queued somewhere still) and that Redis
    runs after the retry and a newer write, then after the folds: the same script call, replayed."""
    store = KeyStore(connect(redis_url, timeout=2.0))
    a, b = "key_" + "d" * 16, "key_" + "e" * 16
    hour_ms = int(NOON * 1000)
    hour, day = hour_ms // HOUR_MS, hour_ms // DAY_MS
    hours = Window("hour", hour_ms, hour_ms + 2 * HOUR_MS)
    days = Window("day", day * DAY_MS, (day + 1) * DAY_MS)
    try:
        buf = UsageBuffer("gw_lost")
        buf.history_every = 0.0
        buf.add(a, hour_ms)
        assert await flush_usage(store, buf, Metrics())
        buf.add(a, hour_ms + 1, 3)
        buf.add(b, hour_ms + 1, 2)
        lost = buf.drain_history()  # sent; its answer never came
        buf.restore_history(lost)
        buf.add(a, hour_ms + 2, 4)
        assert await flush_usage(store, buf, Metrics())  # the retry, with the newer use
        for _ in range(2):  # run late, once or twice: the counts it carries are older
            await store.ledger.write("gw_lost", 0, {}, lost)
            assert await store.ledger.history(a, hours) == {hour: [1, 0, 0, 1, 1]}
            assert await store.ledger.history(a, days) == {day: [1, 0, 0, 1, 1]}
            assert await store.ledger.history(b, hours) == {hour: [0, 0, 1, 0, 0]}
        buf.add(b, hour_ms + HOUR_MS)  # the next hour: 12:00 is over, written and folded
        assert await flush_usage(store, buf, Metrics())
        assert buf.foldable_hours(everything=True) == [hour + 1]  # 12:00 is folded
        await store.ledger.write("gw_lost", 0, {}, lost)  # after the hour's fold: refused
        both = {hour: [1, 0, 0, 1, 1]}, {hour: [0, 0, 1, 0, 0], hour + 1: [1, 0, 0, 0, 0]}
        assert (await store.ledger.history(a, hours), await store.ledger.history(b, hours)) == both
        buf.closing = True  # shutdown: the last hour, then the day, folded
        assert await flush_usage(store, buf, Metrics())
        await store.ledger.write("gw_lost", 0, {}, lost)  # after the day's fold: refused
        assert (await store.ledger.history(a, hours), await store.ledger.history(b, hours)) == both
        expected_days = {day: [1, 0, 0, 1, 1]}, {day: [1, 0, 1, 0, 0]}
        assert (await store.ledger.history(a, days), await store.ledger.history(b, days)) == expected_days
    finally:
        await store.redis.aclose()


async def test_buckets_expire_after_their_retention_and_days_outlive_hours(redis_url, redis_server):
    store = KeyStore(connect(redis_url, timeout=2.0))
    store.ledger.retain(hourly_days=2, daily_days=30)
    key_id = "key_" + "b" * 16
    hour = int(NOON * 1000)
    try:
        buf = UsageBuffer("gw_retention")
        buf.add(key_id, hour, 0)
        buf.add(key_id, hour + HOUR_MS, 2)
        day_start = hour - hour % DAY_MS

        async def read() -> tuple[dict, dict]:
            return (await store.ledger.history(key_id, Window("hour", hour, hour + 2 * HOUR_MS)),
                    await store.ledger.history(key_id, Window("day", day_start, day_start + DAY_MS)))

        def expiry() -> dict[str, int]:
            names = sorted(k.decode() for k in redis_server.client.keys("gw:usage:*:hour:*") +
                           redis_server.client.keys("gw:usage:*:day:*"))
            assert all(n.startswith("gw:usage:{gw}:") for n in names)  # one slot for all
            return {n.split(":")[3]: redis_server.client.pexpiretime(n) for n in names}

        expected = ({hour // HOUR_MS: [1, 0, 0, 0, 0], hour // HOUR_MS + 1: [0, 0, 1, 0, 0]},
                    {day_start // DAY_MS: [1, 0, 1, 0, 0]})
        assert await flush_usage(store, buf, Metrics())
        # 12:00 is over (a later use came): folded into the key's hour bucket, which gets its
        # expiry (a constant per key and day) when the day is folded; 13:00 is still open (this
        # node's hash of the hour), and so is the day (this node's hash of the day): read from there.
        assert expiry() == {"hour": -1}
        assert await read() == expected
        buf.closing = True  # shutdown: the last hour is folded too, then the day
        assert await flush_usage(store, buf, Metrics())
        assert expiry() == {"hour": day_start + DAY_MS + 2 * DAY_MS, "day": day_start + DAY_MS + 30 * DAY_MS}
        assert await read() == expected
        assert redis_server.client.zcard("gw:usage:{gw}:hist:open") == 0
        assert redis_server.client.zcard("gw:usage:{gw}:histday:open") == 0
        # The hashes stay listpacks.
        names = redis_server.client.keys("gw:usage:*:hour:*") + redis_server.client.keys("gw:usage:*:day:*")
        assert {redis_server.client.object("encoding", n) for n in names} == {b"listpack"}
    finally:
        await store.redis.aclose()


async def test_cli_keys_usage_prints_the_table_and_the_json_of_the_admin_api(stack, redis_url):
    key = await stack.create_key()
    hour_s = time.time() // 3600 * 3600  # the CLI's own clock: this hour
    at_hour(stack, hour_s, 1)
    assert (await stack.call("GET", "/v1/tasks", key["key"]))[0] == 200
    assert (await stack.call("POST", "/v1/tasks", key["key"]))[0] == 403
    await flush_gateway(stack)
    start = rfc3339(int(hour_s * 1000))
    span = ["--from", start, "--to", rfc3339(int(hour_s * 1000) + HOUR_MS)]
    env = {"GATEWAY_REDIS_URL": redis_url}
    table = gateway("keys", "usage", key["id"], *span, env=env, check=True).stdout.splitlines()
    assert table[0].split() == ["start", "2xx", "3xx", "4xx", "5xx", "refused", "total"]
    assert table[1].split() == [start[:16], "1", "0", "0", "0", "1", "2"] and table[2].split()[0] == "total"
    as_json = json.loads(gateway("keys", "usage", key["id"], *span, "--json", env=env, check=True).stdout)
    assert as_json == await usage(stack, key["id"], **{"from": span[1], "to": span[3]})
    bad = gateway("keys", "usage", key["id"], "--from", "yesterday", env=env)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("gateway: --from: from must be an RFC 3339")
    missing = gateway("keys", "usage", "key_" + "z" * 16, env=env)
    assert missing.returncode == 1 and "no key key_zzzzzzzzzzzzzzzz" in missing.stderr


def _mix(hour: int) -> list[int]:
    """A typical hour of one active key: successes always, some client errors and refusals, a rare 5xx."""
    return [40 + hour, 0, 3 if hour % 3 == 0 else 0, 1 if hour % 12 == 0 else 0, 2 if hour % 6 == 0 else 0]


async def _write(store: KeyStore, entries) -> None:
    buf = UsageBuffer()  # a node id of its own: batch numbers are per node
    for key_id, hour, counts in entries:
        for outcome, n in enumerate(counts):
            for _ in range(n):
                buf.add(key_id, hour * HOUR_MS, outcome)
    buf.closing = True  # every hour folded into the per-key buckets, as at shutdown
    while buf.history_pending or buf.foldable_hours(everything=True):
        assert await flush_usage(store, buf, Metrics())


async def test_memory_per_active_key_per_day(redis_url, redis_server):
    """Measured (MEMORY USAGE of each key's buckets: used_memory moves with the keyspace's own
    table resizing, which Redis does when it gets to it), and kept under a bound: a day of hour
    buckets with its day's field, and a day once only its day bucket is left (hours expired)."""
    client = redis_server.client
    store = KeyStore(connect(redis_url, timeout=10.0))
    keys = [f"key_{i:016d}" for i in range(1000)]
    page = int(NOON * 1000) // DAY_MS // 32 + 1  # 32 days, all still kept by both retentions

    def size(kind: str, index: int) -> list[int]:
        return [client.memory_usage(f"gw:usage:{{gw}}:{kind}:{k}:{index}", samples=0) or 0 for k in keys]

    try:
        # 31 days of one key's page, one busy hour each, then its hour buckets gone (expired):
        await _write(store, ((k, (page * 32 + d) * 24, _mix(d)) for k in keys for d in range(31)))
        for name in client.scan_iter(match="gw:usage:{gw}:hour:*", count=1000):
            client.unlink(name)
        pages = size("day", page)
        daily = statistics.mean(pages) / 31
        # The page's last day, hour by hour: a new hour hash, one more field in the day hash.
        await _write(store, ((k, (page * 32 + 31) * 24 + h, _mix(h)) for k in keys for h in range(24)))
        hour_hash = statistics.mean(size("hour", page * 32 + 31))
        day_field = statistics.mean(b - a for a, b in zip(pages, size("day", page), strict=True))
        hourly = hour_hash + day_field
        assert not client.keys("gw:usage:{gw}:hist*:gw_*") or all(  # folded node hashes: their marker only
            client.hlen(n) == 1 for n in client.keys("gw:usage:{gw}:hist*:gw_*"))
        sample = [f"gw:usage:{{gw}}:{kind}:{k}:{i}" for k in keys[:20]
                  for kind, i in (("day", page), ("hour", page * 32 + 31))]
        assert {client.object("encoding", s) for s in sample} == {b"listpack"}
    finally:
        await store.redis.aclose()
    print(f"\nusage history: {hourly:.0f} bytes per active key per day (hourly: its hour hash {hour_hash:.0f}, "
          f"its day field {day_field:.0f}), {daily:.0f} once daily only")
    assert hourly <= 600 and daily <= 25, (hourly, daily)  # measured: 552 and 17


async def test_a_write_that_runs_after_its_hour_was_folded_is_refused(redis_url, redis_server):
    store = KeyStore(connect(redis_url, timeout=2.0))
    key_id, hour = "key_" + "c" * 16, int(NOON * 1000) // HOUR_MS
    win = Window("hour", hour * HOUR_MS, (hour + 1) * HOUR_MS)
    try:
        late = HistoryWrite({hour: {key_id: (3, 0, 0, 0, 0)}})
        await store.ledger.write("gw_late", 0, {}, HistoryWrite({hour: {key_id: (2, 0, 0, 0, 0)}}))
        assert await store.ledger.history(key_id, win) == {hour: [2, 0, 0, 0, 0]}  # open: read from the node's hash
        assert await store.ledger.fold_hour("gw_late", hour)
        assert await store.ledger.history(key_id, win) == {hour: [2, 0, 0, 0, 0]}  # folded: the same
        await store.ledger.write("gw_late", 0, {}, late)  # a failed write that Redis ran after all
        assert await store.ledger.history(key_id, win) == {hour: [2, 0, 0, 0, 0]}  # not counted twice
        assert await store.ledger.fold_hour("gw_late", hour)  # a second fold finds nothing
        assert await store.ledger.history(key_id, win) == {hour: [2, 0, 0, 0, 0]}
        # A crashed node's open hour and day are folded by whoever finds them once the node is
        # not heard from: the hour first, then the day (which sets the hour bucket's expiry).
        day = hour // 24
        day_win = Window("day", day * DAY_MS, (day + 1) * DAY_MS)
        crashed = HistoryWrite({hour: {key_id: (1, 0, 0, 0, 0)}}, {day: {key_id: (1, 0, 0, 0, 0)}})
        await store.ledger.write("gw_crashed", 0, {}, crashed)
        await store.ledger.beat("gw_crashed", False)
        assert await store.ledger.fold_dead_history()
        client = redis_server.client
        assert client.zcard("gw:usage:{gw}:hist:open") == client.zcard("gw:usage:{gw}:histday:open") == 1  # alive
        assert await store.ledger.history(key_id, day_win) == {day: [1, 0, 0, 0, 0]}  # its open day hash
        store.ledger.fold_after_ms = 0
        assert await store.ledger.fold_dead_history()
        assert client.zcard("gw:usage:{gw}:hist:open") == client.zcard("gw:usage:{gw}:histday:open") == 0
        assert await store.ledger.history(key_id, win) == {hour: [3, 0, 0, 0, 0]}
        assert await store.ledger.history(key_id, day_win) == {day: [1, 0, 0, 0, 0]}
        assert client.pexpiretime(f"gw:usage:{{gw}}:hour:{key_id}:{day}") == (day + 1 + 90) * DAY_MS
        await store.ledger.write("gw_crashed", 0, {}, crashed)  # its failed write, run late: refused
        assert await store.ledger.history(key_id, day_win) == {day: [1, 0, 0, 0, 0]}
    finally:
        await store.redis.aclose()


def _executed(client) -> dict[str, int]:
    """Commands Redis executed since the last CONFIG RESETSTAT (those inside scripts too)."""
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()
            if not k.startswith(("cmdstat_config", "cmdstat_info"))}


async def test_the_history_rides_on_a_flush_every_history_every_seconds(redis_url, redis_server):
    client = redis_server.client
    store = KeyStore(connect(redis_url, timeout=2.0))
    hour_ms = int(NOON * 1000)
    keys = [f"key_{i:016d}" for i in range(50)]
    buf = UsageBuffer("gw_every")
    try:
        for k in keys:
            buf.add(k, hour_ms)
        assert await flush_usage(store, buf, Metrics())  # the first: the node beats, the history goes
        client.config_resetstat()
        for minute in range(1, 10):  # flushes within HISTORY_EVERY: the last-used HSET alone
            for k in keys:
                buf.add(k, hour_ms + minute)
            assert await flush_usage(store, buf, Metrics())
        # (in its transaction, between two small scripts: an HMGET, an EXISTS)
        last_used = {"multi": 9, "exec": 9, "eval": 18, "hmget": 9, "exists": 9, "hset": 9}
        assert _executed(client) == last_used
        buf.history_at -= HISTORY_EVERY  # HISTORY_EVERY seconds of flushing later
        assert await flush_usage(store, buf, Metrics())
        # One script (no use since the last flush: no last-used HSET): the node's hour and day
        # hashes (an HMGET of the fold marker and the latest write's sequence number, an HSET),
        # set up (expiry, open index) by the first write, so no PEXPIRE or ZADD now.
        assert _executed(client) == {**last_used, "hset": 9 + 2, "eval": 18 + 1, "hmget": 9 + 2}
        win = Window("hour", hour_ms, hour_ms + HOUR_MS)
        assert await store.ledger.history(keys[7], win) == {hour_ms // HOUR_MS: [10, 0, 0, 0, 0]}
        buf.add(keys[7], hour_ms + 1, 4)  # not written yet: in memory until the next write
        assert await store.ledger.history(keys[7], win) == {hour_ms // HOUR_MS: [10, 0, 0, 0, 0]}
        buf.closing = True  # shutdown: written at once, and folded
        assert await flush_usage(store, buf, Metrics())
        assert await store.ledger.history(keys[7], win) == {hour_ms // HOUR_MS: [10, 0, 0, 0, 1]}
        day = Window("day", hour_ms - hour_ms % DAY_MS, hour_ms - hour_ms % DAY_MS + DAY_MS)
        assert await store.ledger.history(keys[7], day) == {hour_ms // DAY_MS: [10, 0, 0, 0, 1]}
        assert client.zcard("gw:usage:{gw}:hist:open") == client.zcard("gw:usage:{gw}:histday:open") == 0
    finally:
        await store.redis.aclose()


async def test_a_fold_executes_one_command_per_key_and_hour_and_three_per_key_and_day(redis_url, redis_server):
    """INFO commandstats around the folds of one node's hashes: per key and hour one HSETNX (the
    common case: one node an hour), per key and day an HSETNX and two expiries; a second node in
    the same hour adds HGET and HSET (the sum)."""
    client = redis_server.client
    store = KeyStore(connect(redis_url, timeout=10.0))
    keys = [f"key_{i:016d}" for i in range(3000)]
    day = int(NOON * 1000) // DAY_MS
    hours = [day * 24 + h for h in (9, 10, 11)]
    counts = {h: {k: (i % 7 + h % 3, 0, i % 2, 0, 1) for i, k in enumerate(keys)} for h in hours}
    day_counts = {k: tuple(map(sum, zip(*(counts[h][k] for h in hours), strict=True))) for k in keys}
    try:
        await store.ledger.write("gw_a", 0, {}, HistoryWrite(counts, {day: day_counts}))
        await store.ledger.write("gw_b", 0, {}, HistoryWrite({hours[0]: counts[hours[0]]}, {day: {}}))

        async def per_key(fold) -> float:
            client.config_resetstat()
            assert await fold
            return sum(_executed(client).values()) / len(keys)

        per_hour = [await per_key(store.ledger.fold_hour("gw_a", h)) for h in hours]
        second_node = await per_key(store.ledger.fold_hour("gw_b", hours[0]))
        per_day = await per_key(store.ledger.fold_day("gw_a", day))
        k = keys[5]
        win = Window("hour", hours[0] * HOUR_MS, (hours[-1] + 1) * HOUR_MS)
        assert await store.ledger.history(k, win) == {
            hours[0]: [2 * counts[hours[0]][k][0], 0, 2, 0, 2], **{h: list(counts[h][k]) for h in hours[1:]}}
        assert await store.ledger.history(k, Window("day", day * DAY_MS, (day + 1) * DAY_MS)) == {
            day: list(day_counts[k])}
        assert client.pexpiretime(f"gw:usage:{{gw}}:hour:{k}:{day}") == (day + 1 + 90) * DAY_MS
        assert client.pexpiretime(f"gw:usage:{{gw}}:day:{k}:{day // 32}") == (day + 1 + 400) * DAY_MS
    finally:
        await store.redis.aclose()
    print(f"\nhistory fold: {per_hour} executed commands per key and hour (one node), {second_node:.3f} "
          f"for a second node's same hour, {per_day:.3f} per key and day")
    assert all(c <= 1.01 for c in per_hour) and second_node <= 3.01 and per_day <= 3.01, (per_hour, second_node, per_day)
