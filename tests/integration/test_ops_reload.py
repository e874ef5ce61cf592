"""Ops listener (/healthz, /readyz, /metrics), the access log, and scopes.yaml hot reload."""

from __future__ import annotations

import logging

import orjson

from tests.support import ROOT, SCOPES, eventually, free_port


async def test_healthz_readyz_metrics(stack):
    created = await stack.create_key()
    await stack.call("GET", "/v1/tasks", created["key"])
    async with stack.http.get(stack.ops + "/healthz") as resp:
        assert resp.status == 200
    async with stack.http.get(stack.ops + "/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200 and body["checks"] == {"rules_loaded": True, "redis": True}
    async with stack.http.get(stack.ops + "/metrics") as resp:
        text = await resp.text()
    assert 'gateway_requests_total{outcome="ok",route="/v1/tasks"} 1.0' in text
    assert "gateway_cache_misses_total" in text and "gateway_request_duration_seconds_bucket" in text


async def test_readyz_is_503_without_redis(make_stack):
    stack = await make_stack(redis=f"redis://127.0.0.1:{free_port()}/0", cache_ttl=0)
    async with stack.http.get(stack.ops + "/readyz") as resp:
        assert resp.status == 503 and (await resp.json())["checks"]["redis"] is False


async def test_access_log_has_identity_but_never_the_key_or_query(stack, caplog):
    created = await stack.create_key()
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await stack.call("GET", "/v1/tasks/t1?secret=hunter2", created["key"])
        wrong = created["key"][:-1] + ("x" if created["key"][-1] != "x" else "y")  # a bad checksum
        await stack.call("GET", "/v1/tasks", headers={"X-API-Key": wrong})
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    ok, denied = lines[-2], lines[-1]
    assert ok["org_id"] == "acme" and ok["key_id"] == created["id"] and ok["route"] == "/v1/tasks/{task_id}"
    assert ok["status"] == 200 and ok["method"] == "GET" and ok["duration_ms"] >= 0 and ok["request_id"]
    assert denied["status"] == 401 and denied["outcome"] == "invalid_api_key"
    text = caplog.text
    assert created["key"] not in text and created["key"][:-1] not in text and "hunter2" not in text


async def test_changed_scopes_file_is_picked_up_and_bad_file_keeps_old_rules(make_stack, tmp_path):
    path = tmp_path / "scopes.yaml"
    original = SCOPES.read_text()
    path.write_text(original)
    stack = await make_stack(scopes=str(path), reload_interval=0.05)
    created = await stack.create_key(scopes=["tasks:read"])
    assert (await stack.call("GET", "/v1/reports", created["key"]))[0] == 404

    path.write_text(original + "\n  - method: GET\n    path: /v1/reports\n    scope: tasks:read\n")

    async def reloaded():
        return (await stack.call("GET", "/v1/reports", created["key"]))[0] == 200

    await eventually(reloaded)
    path.write_text(original + "\n  - method: GET\n    path: /v1/reports\n    scope: nope:nope\n")

    async def rejected():
        return stack.state.metrics.reloads.labels("rejected")._value.get() >= 1

    await eventually(rejected)
    assert (await stack.call("GET", "/v1/reports", created["key"]))[0] == 200  # last good rules


def test_a_valid_file_after_rejected_ones_logs_that_it_recovered(tmp_path, caplog):
    from gateway.reload import RulesHolder

    path = tmp_path / "scopes.yaml"
    good = SCOPES.read_text()
    path.write_text(good)
    results: list[str] = []
    holder = RulesHolder(str(path))
    holder.on_reload = results.append
    with caplog.at_level(logging.INFO, logger="gateway.rules"):
        for _ in range(2):
            path.write_text(good + "\n  - method: GET\n    path: /v1/reports\n    scope: nope:nope\n")
            assert holder.reload(force=True) == "rejected"
        path.write_text(good)  # the last good file restored: nothing to swap, but the alarm is over
        assert holder.reload(force=True) == "unchanged"
        path.write_text("not: [valid")
        assert holder.reload(force=True) == "rejected"
        path.write_text(good + "\n  - method: GET\n    path: /v1/reports\n    scope: tasks:read\n")
        assert holder.reload(force=True) == "reloaded"
        assert holder.reload(force=True) == "unchanged"
    recovered = [r.getMessage() for r in caplog.records if "is valid again" in r.getMessage()]
    assert recovered == [
        f"scopes file {path} is valid again; the rules in force are unchanged (recovered after 2 rejected attempts)",
        f"scopes file {path} is valid again; rules reloaded: {len(holder.current.rules)} rules "
        "(recovered after 1 rejected attempt)",
    ]
    # The metric's labels are the ones the failure table in docs/operations.md names.
    assert results == ["rejected", "rejected", "rejected", "reloaded"]
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert 'gateway_rules_reloads_total{result="rejected"}' in doc and "`reloaded`" in doc
    assert 'result="failed"}` (a good' not in doc
