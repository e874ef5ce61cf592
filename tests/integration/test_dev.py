"""`gateway dev` (what `make run` runs) as a process in a temporary folder: it works as it
prints and as the README's walkthrough says, one instance per folder, one demo key, and a
taken port is one clear line."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.dev import die_with_parent
from tests.support import ROOT, free_port_block

TOKEN = "dev-test-operator-token-0123456789"
DEMO_NAME = "Demo key (gateway dev)"
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}, "PYTHONPATH": str(ROOT)}


@dataclass
class Dev:
    proc: subprocess.Popen
    banner: str
    port: int

    @property
    def key(self) -> str:
        return re.search(r"export KEY=(\S+)", self.banner).group(1)

    @property
    def token(self) -> str:
        return re.search(r"export TOKEN=(\S+)", self.banner).group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_base_port() -> int:
    """A gateway port whose admin (+1), upstream (+2), sign-in provider (+3), ops (+10) and admin ops (+11)
    ports are free too."""
    return free_port_block(0, 1, 2, 3, 10, 11)


def dev_command(port: int) -> list[str]:
    return [sys.executable, "-m", "gateway", "dev", "--port", str(port)]


@pytest.fixture
def start_dev():
    """Start `gateway dev` in a folder and wait for its banner; stopped (Ctrl-C) at teardown."""
    started: list[Dev] = []

    def start(cwd: Path, port: int | None = None) -> Dev:
        port = port or free_base_port()
        proc = subprocess.Popen(dev_command(port), cwd=cwd, env={**ENV, "GATEWAY_OPERATOR_TOKEN": TOKEN},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=die_with_parent)  # nothing left if the test run is killed
        dev = Dev(proc, "", port)
        started.append(dev)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 30
        while not ("create a key" in dev.banner and dev.banner.rstrip().endswith("api-keys")):
            try:
                dev.banner += lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                proc.kill()
                raise AssertionError(f"no banner in 30 s; stdout so far: {dev.banner!r}; stderr: {proc.stderr.read()}") from None
        return dev

    yield start
    for dev in started:
        dev.stop()


def curl(command: str, env: dict) -> tuple[int, str]:
    """Run a pasted curl command with bash; its status and body."""
    out = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], env=env, capture_output=True,
                         text=True, timeout=10).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


def _join_continuations(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def banner_examples(banner: str) -> list[tuple[int, str]]:
    """Each curl of the banner with the status its comment claims ("# ... (403 ...")."""
    out, claim = [], None
    for line in (line.strip() for line in _join_continuations(banner)):
        if line.startswith("#"):
            found = re.search(r"\((\d{3})\b", line)
            claim = int(found.group(1)) if found else None
        elif line.startswith("curl"):
            assert claim is not None, f"the comment before {line!r} claims no status"
            out.append((claim, line))
            claim = None
    return out


def readme_walkthrough() -> list[str]:
    """The commands of the README's five-minute walkthrough, continuations joined."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Five-minute walkthrough", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("   #")[0].strip() for line in _join_continuations(block)
            if line.strip() and not line.startswith("#")]


def create_body(command: str) -> dict:
    return json.loads(re.search(r"-d '([^']*)'", command).group(1))


def test_dev_works_as_it_prints_and_as_the_readme_says(tmp_path, start_dev):
    dev = start_dev(tmp_path)
    gw, admin = dev.port, dev.port + 1
    env = {**ENV, "KEY": dev.key, "TOKEN": dev.token}
    examples = banner_examples(dev.banner)
    assert [claim for claim, _ in examples] == [200, 403, 401, 200, 200, 201]  # each example says what it gets
    for claim, command in examples:
        assert curl(command, env)[0] == claim, command
    page = re.search(r"page +(http://127\.0\.0\.1:(\d+)/) +\(Settings -> API Keys\)", dev.banner)
    assert page and int(page.group(2)) == admin
    status, html = curl(f"curl -s {page.group(1)}", env)
    assert status == 200 and "API Keys" in html

    # The README's walkthrough, pasted after the banner's export lines (its ports are the defaults).
    commands = [c.replace("127.0.0.1:8080", f"127.0.0.1:{gw}").replace("127.0.0.1:8081", f"127.0.0.1:{admin}")
                for c in readme_walkthrough()]
    create, export, *calls = commands
    assert create_body(create) == create_body(examples[-1][1])  # the banner creates the README's key
    status, body = curl(create, env)
    assert status == 201, body
    created = json.loads(body)
    assert export.startswith("export ZAP=sop_")
    env["ZAP"] = created["key"]
    calls = [c.replace("key_...", created["id"]) for c in calls]
    # tasks, 403, list, roll, usage, activity, revoke, then 401 for the (rolled-from) secret
    assert [curl(c, env)[0] for c in calls] == [200, 403, 200, 200, 200, 200, 200, 401], calls

    # The banner's loop past the demo key's 5 a second, run at the start of a second (so its 8
    # requests fall in one window): 5 answered, then 429 rate_limited.
    loop = next(line.strip() for line in _join_continuations(dev.banner) if line.strip().startswith("for i in"))
    time.sleep(1.02 - time.time() % 1)
    out = subprocess.run(["bash", "-c", loop], env=env, capture_output=True, text=True, timeout=10).stdout
    assert out.split() == ["200"] * 5 + ["429"] * 3, out
    assert (tmp_path / ".data" / "redis" / "appendonlydir").is_dir()  # AOF is on

    redis_port = int(re.search(r"redis +redis://127.0.0.1:(\d+)", dev.banner).group(1))
    dev.stop()
    assert dev.proc.returncode == 0
    for p in (gw, admin, gw + 2, gw + 3, gw + 10, gw + 11, redis_port):
        assert not _busy(p), f"port {p} still served after Ctrl-C"


def demo_keys(dev: Dev) -> list[dict]:
    env = {**ENV, "TOKEN": dev.token}
    status, body = curl(f'curl -s -H "Authorization: Bearer $TOKEN" '
                        f'http://127.0.0.1:{dev.port + 1}/v1/orgs/demo/api-keys?limit=100', env)
    assert status == 200, body
    return [k for k in json.loads(body)["data"] if k["name"] == DEMO_NAME]


def test_one_dev_per_folder_and_one_demo_key_after_restarts(tmp_path, start_dev):
    first = start_dev(tmp_path)
    key_env = {**ENV, "KEY": first.key}
    call = f'curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:{first.port}/v1/tasks'
    assert curl(call, key_env)[0] == 200

    # Other ports, same folder (same .data/redis): refused before anything starts.
    other = free_base_port()
    started = time.monotonic()
    second = subprocess.run(dev_command(other), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=30)
    assert second.returncode != 0 and time.monotonic() - started < 10
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert "already running in this folder" in lines[0]
    assert f"pid {first.proc.pid}" in lines[0] and f"gateway :{first.port}" in lines[0], lines[0]
    redis_port = re.search(r"redis +redis://127.0.0.1:(\d+)", first.banner).group(1)
    assert f"redis :{redis_port}" in lines[0] and f"admin API :{first.port + 1}" in lines[0]
    assert not _busy(other) and second.stdout == ""
    assert curl(call, key_env)[0] == 200  # the first one keeps working
    assert [k["status"] for k in demo_keys(first)] == ["active"]

    first.stop()
    assert first.proc.returncode == 0
    again = start_dev(tmp_path)  # the lock is free once the first has stopped (the file stays)
    assert (tmp_path / ".data" / "dev.lock").exists()
    keys = demo_keys(again)
    assert [k["status"] for k in keys] == ["active"], keys  # the first run's key was replaced
    call = f'curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:{again.port}/v1/tasks'
    assert curl(call, key_env)[0] == 401  # the first run's key: revoked
    assert curl(call, {**ENV, "KEY": again.key})[0] == 200


def test_a_killed_dev_leaves_no_lock_behind(tmp_path, start_dev):
    first = start_dev(tmp_path)
    first.proc.kill()  # no clean-up at all: the kernel drops the flock with the processes
    first.proc.wait()
    lock = tmp_path / ".data" / "dev.lock"
    with open(lock) as f:  # its redis-server (told by PR_SET_PDEATHSIG) holds the lock until it exits
        deadline = time.monotonic() + 10
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the lock outlived the killed dev and its redis-server"
                time.sleep(0.05)
    again = start_dev(tmp_path)
    assert json.loads(lock.read_text())["pid"] == again.proc.pid


def test_a_taken_port_is_one_clear_line_before_redis_starts(tmp_path):
    port = free_base_port()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port + 1))  # something else has the admin API's port
        taken.listen()
        result = subprocess.run(dev_command(port), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                                timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"port {port + 1} (admin API) is in use" in lines[0] and "--port" in lines[0], lines[0]
    assert not (tmp_path / ".data" / "redis").exists()  # redis-server was never started
    assert not _busy(port)


def banner_people(banner: str) -> dict[str, str]:
    """login -> password of the dev provider's people, as the banner prints them."""
    return dict(re.findall(r"^ +(demo-\w+) / (\S+) +\(\w+ of org demo\)$", banner, re.M))


async def test_the_printed_demo_users_sign_in_at_the_dev_provider(tmp_path, start_dev):
    import aiohttp

    from tests.support.oidc import sign_in

    dev = start_dev(tmp_path)
    admin = f"http://127.0.0.1:{dev.port + 1}"
    assert re.search(rf"sign-in +http://127\.0\.0\.1:{dev.port + 3} +\(DEV-ONLY OpenID provider", dev.banner), dev.banner
    people = banner_people(dev.banner)
    assert sorted(people) == ["demo-admin", "demo-viewer"], dev.banner
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(admin + "/auth/config") as r:
            assert (await r.json())["sign_in"] is True
        with pytest.raises(AssertionError):  # a wrong password signs nobody in
            await sign_in(http, admin, "demo-admin", "not-" + people["demo-admin"])
        await sign_in(http, admin, "demo-admin", people["demo-admin"])
        async with http.get(admin + "/auth/session") as r:
            me = await r.json()
        assert (me["org_id"], me["role"], me["actor"]) == ("demo", "admin", "user:demo-admin <demo-admin@demo.example>")
        async with http.post(admin + "/v1/orgs/demo/api-keys", headers={"X-CSRF-Token": me["csrf_token"]},
                             json={"name": "Signed in", "scopes": ["tasks:read"], "expires_in": "30d"}) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["created_by"] == me["actor"]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await sign_in(http, admin, "demo-viewer", people["demo-viewer"])
        async with http.get(admin + "/auth/session") as r:
            me = await r.json()
        assert me["role"] == "viewer"
        async with http.get(admin + "/v1/orgs/demo/api-keys") as r:
            assert r.status == 200
        async with http.post(admin + "/v1/orgs/demo/api-keys", headers={"X-CSRF-Token": me["csrf_token"]},
                             json={"name": "Not allowed", "scopes": ["tasks:read"]}) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "insufficient_role"


def test_without_node_sign_in_is_off_and_the_rest_runs(tmp_path, start_dev, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(shutil.which("redis-server"))
    monkeypatch.setitem(ENV, "PATH", str(bin_dir))  # redis-server, but no node and no npm
    (tmp_path / "work").mkdir()
    dev = start_dev(tmp_path / "work")
    assert re.search(r"sign-in +off: node and npm are required", dev.banner), dev.banner
    assert not banner_people(dev.banner)
    status, body = curl(f"curl -s http://127.0.0.1:{dev.port + 1}/auth/config", {**os.environ})
    assert status == 200 and json.loads(body) == {"sign_in": False, "issuer": None}
    assert curl(f'curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:{dev.port}/v1/tasks',
                {**os.environ, "KEY": dev.key})[0] == 200
