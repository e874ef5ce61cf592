"""Per-key limits across 3 gateway processes (issue 16): accuracy, Redis cost, throughput, and a naive limiter.

    .venv/bin/python bench/ratelimit.py [--duration 5] [--concurrency 48]

For each limit (10/s, 1,000/s, 100,000/day) three `gateway serve` processes share one redis-server,
and a round-robin client (aiohttp, closed loop) sends one key's requests as fast as it can. It
prints the admitted/limit ratio of every window (by the second the answer arrived: a request
admitted at a window's end may be counted in the next), Redis commands per request (INFO
commandstats deltas; a Lua script's own commands included), and req/s; then the same with no
limit, and side by side three naive proxies (bench/baseline_proxy.py --naive-limit: one INCR per
request, Kong's accurate mode) with the same limit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.store import KeyStore, connect  # noqa: E402

LIMITS = [("second", 10, 1), ("second", 1000, 1), ("day", 100_000, 86_400)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, path: str = "") -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args} exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if not path:
                    return
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args} not ready")


class Procs:
    def __init__(self) -> None:
        self.all: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    def start(self, *argv: str) -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.all.append(proc)
        return proc

    def stop(self, procs) -> None:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


OPS: dict[str, str] = {}  # gateway URL -> its ops URL


def limiter_commands(urls: list[str]) -> int:
    """The limiter's own Redis commands (gateway_limit_redis_commands_total), summed over the gateways."""
    import urllib.request

    total = 0
    for url in urls:
        if url in OPS:
            text = urllib.request.urlopen(OPS[url] + "/metrics").read().decode()
            total += sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                         if line.startswith("gateway_limit_redis_commands_total{"))
    return total


def gateways(procs: Procs, redis_url: str, upstream: str, limits: str | None) -> tuple[list[str], list]:
    urls, started = [], []
    for _ in range(3):
        port, ops = free_port(), free_port()
        argv = [sys.executable, "-m", "gateway", "serve", "--listen", f"127.0.0.1:{port}", "--ops-listen",
                f"127.0.0.1:{ops}", "--upstream", upstream, "--redis", redis_url, "--scopes", str(ROOT / "scopes.yaml")]
        proc = procs.start(*argv, *(["--default-limits", limits] if limits else []))
        wait_port(ops, proc, "/readyz")
        urls.append(f"http://127.0.0.1:{port}")
        OPS[urls[-1]] = f"http://127.0.0.1:{ops}"
        started.append(proc)
    return urls, started


def naive(procs: Procs, redis_url: str, upstream: str, window_s: int, limit: int) -> tuple[list[str], list]:
    urls, started = [], []
    for _ in range(3):
        port = free_port()
        proc = procs.start(sys.executable, str(ROOT / "bench" / "baseline_proxy.py"), "--listen", f"127.0.0.1:{port}",
                           "--upstream", upstream, "--redis", redis_url, "--naive-limit", f"{window_s}={limit}")
        wait_port(port, proc)
        urls.append(f"http://127.0.0.1:{port}")
        started.append(proc)
    return urls, started


def commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


async def load(urls: list[str], key: str, seconds: float, concurrency: int) -> tuple[int, collections.Counter, float]:
    """Round-robin closed-loop load; returns (requests, admitted per second of arrival, elapsed)."""
    admitted: collections.Counter = collections.Counter()
    sent = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        deadline = time.monotonic() + seconds
        started = time.monotonic()

        async def worker(i: int) -> None:
            nonlocal sent
            n = i
            while time.monotonic() < deadline:
                async with http.get(f"{urls[n % len(urls)]}/v1/tasks", headers=headers) as resp:
                    await resp.read()
                    sent += 1
                    if resp.status == 200:
                        admitted[int(time.time())] += 1
                    elif resp.status != 429:
                        raise RuntimeError(f"status {resp.status}")
                n += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return sent, admitted, time.monotonic() - started


def row(name: str, limit: int | None, window_s: int, sent: int, admitted: collections.Counter, elapsed: float,
        cmds: int, own: int | None) -> str:
    ok = sum(admitted.values())
    if limit is None:
        ratio = "-"
    elif window_s == 1:
        seconds = sorted(admitted)[1:-1] or sorted(admitted)  # whole seconds only (not the first and last)
        ratios = [admitted[s] / limit for s in seconds]
        ratio = f"max {max(ratios):.3f} min {min(ratios):.3f} ({len(ratios)} windows)"
    else:
        ratio = f"{ok / limit:.3f} (one window; {ok:,} of {limit:,})"
    own_text = "-" if own is None else f"{own / max(sent, 1):.4f}"
    return f"{name:38} {sent / elapsed:9.0f} {ok:9,} {cmds / max(sent, 1):9.4f} {own_text:>9}   {ratio}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run (default 5)")
    parser.add_argument("--concurrency", type=int, default=48, help="requests in flight (default 48)")
    args = parser.parse_args()
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    try:
        rport = free_port()
        redis_proc = procs.start(shutil.which("redis-server") or "redis-server", "--port", str(rport), "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp))
        wait_port(rport, redis_proc)
        redis_url = f"redis://127.0.0.1:{rport}/0"
        client = redis.Redis(port=rport)
        uport = free_port()
        upstream_proc = procs.start(sys.executable, "-m", "gateway.echo", "--listen", f"127.0.0.1:{uport}")
        wait_port(uport, upstream_proc)
        upstream = f"http://127.0.0.1:{uport}"
        store = KeyStore(connect(redis_url))

        async def new_key() -> str:
            _, secret = await store.create(org_id="bench", name="k", scopes=["tasks:read"], expires_at=None,
                                           actor="bench", now_ms=int(time.time() * 1000))
            return secret

        print(f"3 processes each, round-robin, {args.concurrency} in flight, {args.duration:g} s per run")
        print("cmd/req: every Redis command executed (the processes' heartbeats and flushes, and a script's own "
              "commands, included); limiter: the commands the limiter sent (LEASE, RETURN, PUBLISH)")
        print(f"{'config':38} {'req/s':>9} {'admitted':>9} {'cmd/req':>9} {'limiter':>9}   admitted/limit per window")
        configs = [("gateway, no limit", None, None, 1, "gw")]
        for window, limit, window_s in LIMITS:
            configs.append((f"gateway, {limit:,}/{window}", f"{window}={limit}", limit, window_s, "gw"))
            if window_s == 1:
                configs.append((f"naive INCR, {limit:,}/{window}", None, limit, window_s, "naive"))
        for name, spec, limit, window_s, kind in configs:
            urls, started = (gateways(procs, redis_url, upstream, spec) if kind == "gw"
                             else naive(procs, redis_url, upstream, window_s, limit))
            key = await new_key()
            await load(urls, key, 0.5, args.concurrency)  # warm-up (another key's budget: not counted)
            key = await new_key()
            before, own_before = commands(client), limiter_commands(urls)
            sent, admitted, elapsed = await load(urls, key, args.duration, args.concurrency)
            cmds = commands(client) - before
            own = limiter_commands(urls) - own_before if kind == "gw" else sent  # naive: one INCR a request
            print(row(name, limit, window_s, sent, admitted, elapsed, cmds, own), flush=True)
            procs.stop(started)
        await store.redis.aclose()
    finally:
        procs.stop([p for p in procs.all if p.poll() is None])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
