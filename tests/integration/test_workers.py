"""`gateway serve --workers N`: one port, N processes, revocation on all, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import redis

from gateway.workers import merge_metrics
from tests.support import OPERATOR_TOKEN, ROOT, SCOPES, free_port
from tests.security.recorder import Recorder


def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Connection": "close", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def gateway_cli(*args: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_merge_metrics_labels_each_worker():
    text = ('# HELP gateway_requests_total Requests\n# TYPE gateway_requests_total counter\n'
            'gateway_requests_total{outcome="ok",route="/v1/tasks"} 3.0\n')
    merged = merge_metrics({0: text, 1: text.replace("3.0", "4.0")})
    assert 'gateway_requests_total{outcome="ok",route="/v1/tasks",worker="0"} 3.0' in merged
    assert 'gateway_requests_total{outcome="ok",route="/v1/tasks",worker="1"} 4.0' in merged
    assert merged.count("# TYPE gateway_requests counter") == 1


@pytest.fixture
def workers(redis_url):
    upstream = Recorder().start()  # its own thread: these tests block on sockets
    port, ops = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
           "GATEWAY_REDIS_URL": redis_url, "GATEWAY_SCOPES": str(SCOPES), "GATEWAY_OPERATOR_TOKEN": OPERATOR_TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}",
         "--ops-listen", f"127.0.0.1:{ops}", "--upstream", upstream.url,
         "--flush-interval", "3600"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if get(f"http://127.0.0.1:{ops}/readyz")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "workers not ready"
        time.sleep(0.1)
    yield port, ops, proc, env
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    upstream.stop()


def test_two_workers_share_the_port_refuse_a_revoked_key_everywhere_and_stop_cleanly(workers):
    port, ops, proc, env = workers
    key = gateway_cli("keys", "create", "--org", "acme", "--name", "w", "--scope", "tasks:read", env=env)
    for _ in range(60):  # new connections spread over both workers; each caches the key
        assert get(f"http://127.0.0.1:{port}/v1/tasks", {"X-API-Key": key["key"]})[0] == 200
    status, text = get(f"http://127.0.0.1:{ops}/metrics")
    assert status == 200
    served = {line.split('worker="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("gateway_requests_total{") and 'outcome="ok"' in line}
    assert served == {"0", "1"}, text[:2000]
    health = json.loads(get(f"http://127.0.0.1:{ops}/healthz")[1])
    assert health == {"status": "ok", "workers_alive": 2, "workers": 2}

    revoked = gateway_cli("keys", "revoke", "--org", "acme", key["id"], env=env)
    assert revoked["status"] == "revoked"
    codes = {get(f"http://127.0.0.1:{port}/v1/tasks", {"X-API-Key": key["key"]})[0] for _ in range(60)}
    assert codes == {401}

    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err.count("worker 0") >= 1 and "worker 1" in err
    listed = gateway_cli("keys", "list", "--org", "acme", "--include-revoked", env=env)
    assert listed[0]["request_count"] == 60 and listed[0]["last_used_at"]  # both workers flushed on SIGTERM
    client = redis.Redis.from_url(env["GATEWAY_REDIS_URL"])
    try:  # ... and folded their usage hashes into the base
        # (each folded hash keeps only its marker: the generation a late write must reach)
        nodes = client.keys("gw:usage:{gw}:node:*")
        assert nodes and all(client.hkeys(n) == [b"^"] for n in nodes)
        assert client.zcard("gw:usage:{gw}:nodes") == 0
    finally:
        client.close()
    for p in (port, ops):
        with pytest.raises(OSError):
            get(f"http://127.0.0.1:{p}/healthz")


def test_a_killed_worker_is_replaced(workers):
    port, ops, proc, env = workers
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    os.kill(int(children[0]), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        now = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if len(now) == 2 and children[0] not in now and get(f"http://127.0.0.1:{ops}/readyz")[0] == 200:
            break
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.1)
    assert get(f"http://127.0.0.1:{port}/v1/status")[0] == 200
