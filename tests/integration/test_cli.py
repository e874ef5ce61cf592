"""The `gateway` command: scopes check/explain, keys create/list/revoke, serve as a process (dev: test_dev.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import aiohttp
import pytest
import redis

from tests.conftest import ROOT, SCOPES, eventually, free_port


def gateway(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60, check=check)


def test_scopes_check_ok_and_error_names_file_line_field(tmp_path):
    ok = gateway("scopes", "check", str(SCOPES))
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("permissions:\n  tasks:read: View tasks\nroutes:\n  - method: GET\n    path: /v1/tasks\n    scope: tasks:reed\n")
    result = gateway("scopes", "check", str(bad))
    assert result.returncode != 0
    assert f"{bad}:6" in result.stderr and "routes[0].scope" in result.stderr and "tasks:reed" in result.stderr


def test_scopes_explain():
    result = gateway("scopes", "explain", "GET", "/v1/tasks/t1", "--file", str(SCOPES))
    assert result.returncode == 0 and "/v1/tasks/{task_id}" in result.stdout and "tasks:read" in result.stdout
    result = gateway("scopes", "explain", "GET", "/v1/../x", "--file", str(SCOPES))
    assert result.returncode == 1 and "invalid_path" in result.stdout


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["serve"], {}, "--upstream"),
        (["serve", "--upstream", "ftp://x"], {}, "--upstream"),
        (["serve", "--upstream", "http://x", "--redis-timeout", "soon"], {}, "--redis-timeout"),
        (["serve", "--upstream", "http://x"], {"GATEWAY_LISTEN": "nope"}, "--listen"),
        (["serve", "--upstream", "http://x", "--trusted-proxies", "10.0.0.0/8,bogus"], {}, "--trusted-proxies"),
        (["admin"], {"GATEWAY_OPERATOR_TOKEN": "short"}, "GATEWAY_OPERATOR_TOKEN"),
    ],
)
def test_bad_configuration_exits_with_one_clear_line(args, env, fragment):
    clean = {k: "" for k in os.environ if k.startswith("GATEWAY_")}
    result = gateway(*args, env={**clean, **env})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway: ") and fragment in lines[0]


def test_keys_create_list_revoke(redis_url):
    env = {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_SCOPES": str(SCOPES)}
    created = gateway("keys", "create", "--org", "acme", "--name", "CLI key", "--scope", "tasks:read,tasks:write",
                      "--expires-in", "30d", env=env, check=True)
    key = json.loads(created.stdout)
    assert re.fullmatch(r"sop_[0-9A-Za-z]{36}", key["key"]) and key["scopes"] == ["tasks:read", "tasks:write"]
    listed = json.loads(gateway("keys", "list", "--org", "acme", env=env, check=True).stdout)
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
    revoked = json.loads(gateway("keys", "revoke", "--org", "acme", key["id"], env=env, check=True).stdout)
    assert revoked["status"] == "revoked"
    assert json.loads(gateway("keys", "list", "--org", "acme", env=env, check=True).stdout) == []
    unknown = gateway("keys", "create", "--org", "acme", "--name", "x", "--scope", "nope:nope", env=env)
    assert unknown.returncode == 2 and "nope:nope" in unknown.stderr


async def test_serve_process_end_to_end_and_sigterm_flushes_last_used(redis_url, echo_server):
    env = {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_SCOPES": str(SCOPES)}
    key = json.loads(gateway("keys", "create", "--org", "acme", "--name", "p", "--scope", "tasks:read",
                             env=env, check=True).stdout)
    port, ops = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--listen", f"127.0.0.1:{port}", "--ops-listen", f"127.0.0.1:{ops}",
         "--upstream", str(echo_server.make_url("")).rstrip("/"), "--flush-interval", "3600"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        async with aiohttp.ClientSession() as http:
            async def ready():
                try:
                    async with http.get(f"http://127.0.0.1:{ops}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, timeout=15)
            async with http.get(f"http://127.0.0.1:{port}/v1/tasks", headers={"X-API-Key": key["key"]}) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)  # used exactly once, right before SIGTERM
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    listed = json.loads(gateway("keys", "list", "--org", "acme", env=env, check=True).stdout)
    assert listed[0]["last_used_at"] is not None and listed[0]["request_count"] == 1
    client = redis.Redis.from_url(redis_url)
    try:  # the process folded its usage hash into the base on the way out
        assert client.keys("gw:usage:{gw}:node:*") == [] and client.keys("gw:usage:{gw}:base:*")
    finally:
        client.close()
    access = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert access[-1]["key_id"] == key["id"] and key["key"] not in out + err
