"""Revocation propagation across gateway processes: how long from "revoke" to "refused everywhere".

Starts a redis-server, a tiny upstream, an admin API and several `gateway serve` processes (each
with its cache on), then repeatedly: creates a key, warms every gateway's cache with it,
revokes it through the admin API, and immediately asks every gateway again. It reports the
distribution of:

  revoke_ms     the admin API's revoke round trip (it answers once every gateway acknowledged)
  refused_ms    from the revoke answer until a gateway refused the key (per gateway; 0 when the
                very first request after the answer was refused, which is the guarantee)
  first_ok      requests accepted after the revoke answer (must be 0)

Usage: .venv/bin/python bench/propagation.py [--gateways 3] [--iterations 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "propagation-operator-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"not ready: {url}")
            await asyncio.sleep(0.05)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(values), "min": round(ordered[0], 3), "p50": pick(0.50), "p90": pick(0.90),
            "p99": pick(0.99), "max": round(ordered[-1], 3), "mean": round(statistics.fmean(values), 3)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="propagation-"))
    procs: list[subprocess.Popen] = []
    upstream_runner = None
    try:
        redis_port = free_port()
        procs.append(subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"

        async def ok(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        upstream = web.Application()
        upstream.router.add_route("*", "/{tail:.*}", ok)
        upstream_runner = web.AppRunner(upstream)
        await upstream_runner.setup()
        up_port = free_port()
        await web.TCPSite(upstream_runner, "127.0.0.1", up_port).start()

        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_REDIS_URL=redis_url, GATEWAY_SCOPES=str(ROOT / "scopes.yaml"),
                   GATEWAY_OPERATOR_TOKEN=TOKEN, GATEWAY_AUTH_FAILURE_LIMIT="0")
        admin_port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "gateway", "admin", "--listen", f"127.0.0.1:{admin_port}"],
                                      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        gateways = []
        for _ in range(args.gateways):
            port, ops = free_port(), free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--listen", f"127.0.0.1:{port}", "--ops-listen",
                 f"127.0.0.1:{ops}", "--upstream", f"http://127.0.0.1:{up_port}"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            gateways.append((f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops}"))
        for _, ops in gateways:
            await wait_ready(ops + "/readyz")
        admin = f"http://127.0.0.1:{admin_port}"
        await wait_ready(admin + "/openapi.json")
        auth = {"Authorization": f"Bearer {TOKEN}"}

        revoke_ms: list[float] = []
        refused_ms: list[float] = []
        accepted_after = 0
        async with aiohttp.ClientSession() as http:
            for i in range(args.iterations):
                async with http.post(f"{admin}/v1/orgs/bench/api-keys", headers=auth,
                                     json={"name": f"p{i}", "scopes": ["tasks:read"]}) as resp:
                    created = await resp.json()
                key = {"X-API-Key": created["key"]}
                for gw, _ in gateways:  # warm every cache: the second call is a cache hit
                    for _ in range(2):
                        async with http.get(gw + "/v1/tasks", headers=key) as resp:
                            assert resp.status == 200, resp.status
                started = time.perf_counter()
                async with http.post(f"{admin}/v1/orgs/bench/api-keys/{created['id']}/revoke", headers=auth) as resp:
                    assert resp.status == 200
                answered = time.perf_counter()
                revoke_ms.append((answered - started) * 1000)

                seen_ok = {gw: False for gw, _ in gateways}

                async def until_refused(gw: str, key: dict = key, seen_ok: dict = seen_ok,
                                        answered: float = answered) -> float:
                    nonlocal accepted_after
                    while True:
                        async with http.get(gw + "/v1/tasks", headers=key) as resp:
                            if resp.status == 401:
                                return 0.0 if not seen_ok[gw] else (time.perf_counter() - answered) * 1000
                            seen_ok[gw] = True
                            accepted_after += 1

                refused_ms += await asyncio.gather(*(until_refused(gw) for gw, _ in gateways))

        result = {
            "gateways": args.gateways, "iterations": args.iterations,
            "revoke_ms": percentiles(revoke_ms), "refused_ms": percentiles(refused_ms),
            "requests_accepted_after_revoke_answered": accepted_after,
        }
        print(f"{args.gateways} gateway processes, {args.iterations} revocations")
        print(f"{'':14}{'min':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}   (ms)")
        for name in ("revoke_ms", "refused_ms"):
            d = result[name]
            print(f"{name:14}" + "".join(f"{d[k]:>8.2f}" for k in ("min", "p50", "p90", "p99", "max")))
        print(f"requests accepted after the revoke was answered: {accepted_after}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0 if accepted_after == 0 else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if upstream_runner is not None:
            await upstream_runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
