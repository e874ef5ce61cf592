"""Benchmark the gateway against nginx and a plain aiohttp proxy on this machine, in one run.

    .venv/bin/python bench/run.py              # full run (~6 min on 2 cores); see bench/README.md
    .venv/bin/python bench/run.py --smoke      # every config for ~1 s, tiny key counts (CI, < 60 s)

Prints a table and the ratios issue #6 asks about; writes everything to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import redis  # noqa: E402

from gateway import keys as key_format  # noqa: E402
from gateway import store as store_mod  # noqa: E402
import keyfill  # noqa: E402
import loadgen  # noqa: E402
import servers  # noqa: E402
from procs import Proc, Processes, machine_busy_seconds, self_cpu_seconds, vm_rss_kib  # noqa: E402

PATH = "/v1/tasks"  # GET needs tasks:read in the shipped scopes.yaml
# gateway_hit_limited: a default plan on every key (issue 16), never reached: what enforcing it costs.
LIMITED = "minute=100000000,month=999999999999"



def script_commands(store_dir: Path) -> set[str]:
    """Commands the store's Lua scripts call: when the gateway runs EVALSHA, Redis counts these too.

    HGETALL and HSET are left out: the gateway sends them directly (verification, last-used
    flushes), and the scripts that also call them (revoke, create, fold) do not run while a
    configuration is measured.
    """
    text = "\n".join(p.read_text() for p in sorted(store_dir.glob("*.py")))
    return {c.lower() for c in re.findall(r"redis\.call\('([A-Za-z]+)'", text)} - {"hgetall", "hset"}


@dataclass
class Config:
    name: str
    label: str
    start: Callable[[], Proc] | None  # starts the proxy under test; None: wrk talks to the upstream
    gateway: bool = False
    warm_all_keys: bool = False
    # After the pass over all keys, --warmup s of the measured load too: a limited key's first
    # lease on a process has no rate to size it by (one unit), so its next request leases again;
    # without this, a short run with 10,000 keys (~1 request a second each) measures those cold
    # leases (~4 Redis commands a request), not the steady state.
    steady_warm: bool = False


# -- one measured run ------------------------------------------------------------------------

def redis_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def measure(cfg: Config, args, ctx: dict) -> dict:
    """Start the proxy, warm up, one wrk run with CPU, Redis and cache counters read around it, stop it.

    Only the proxy under test runs during its measurement: an idle gateway's pings and flushes
    would otherwise count in another configuration's Redis commands.
    """
    proc = cfg.start() if cfg.start else ctx["upstream"]
    try:
        for attempt in range(1 + args.retries):
            wait_quiet(args, [proc, ctx["upstream"], ctx["redis"]])
            row = _measure(cfg, proc, f"http://127.0.0.1:{proc.port}{PATH}", args, ctx)
            row["attempt"] = attempt + 1
            if row["foreign_cpu_cores"] <= args.max_foreign_load:
                break
            print(f"  {cfg.name}: other processes used {row['foreign_cpu_cores']:.2f} cores during the run; "
                  + ("measuring again" if attempt < args.retries else "keeping it, flagged"), flush=True)
        return row
    finally:
        if cfg.start:
            ctx["procs"].stop(proc)


def wait_quiet(args, ours: list[Proc]) -> None:
    """Wait (up to --quiet-wait s) for a second in which other processes use < --max-foreign-load cores."""
    deadline = time.monotonic() + args.quiet_wait
    ours = list({id(p): p for p in ours}.values())
    waited = 0
    while True:
        mine = sum(p.cpu_seconds() for p in ours) + self_cpu_seconds()
        busy = machine_busy_seconds()
        time.sleep(1.0)
        foreign = (machine_busy_seconds() - busy) - (sum(p.cpu_seconds() for p in ours) + self_cpu_seconds() - mine)
        if foreign <= args.max_foreign_load or time.monotonic() > deadline:
            return
        if waited % 15 == 0:
            print(f"  waiting for a quiet machine: other processes use {foreign:.2f} cores", flush=True)
        waited += 1


def _measure(cfg: Config, proc: Proc, url: str, args, ctx: dict) -> dict:
    keys_file = str(ctx["keys_file"])
    scripts = ctx["scripts"]
    wrk_cpus = ctx["procs"].infra_cpus if args.pin else None
    if cfg.warm_all_keys:  # every key once, so the measured run is all cache hits
        warm = loadgen.run_wrk(url, seconds=args.keys / 500 + 30, connections=args.connections,
                               script=scripts["keys_once"], args=(keys_file, "sequential"), cpus=wrk_cpus)
        if warm.failed:  # a key not cached would miss in the measured run: say so here
            raise RuntimeError(f"{cfg.name} warm-up: {warm.failed} failed requests {warm.errors} of {warm.requests}"
                               + statuses_seen(proc))
    if (cfg.steady_warm or not cfg.warm_all_keys) and args.warmup > 0:
        loadgen.run_wrk(url, seconds=args.warmup, connections=args.connections,
                        script=scripts["keys"], args=(keys_file, "random", "7"), cpus=wrk_cpus)
    rc: redis.Redis = ctx["redis_client"]
    infra = {"upstream": ctx["upstream"], "redis": ctx["redis"]}
    gw_before = servers.gateway_metrics(proc) if cfg.gateway else {}
    calls_before = redis_calls(rc)
    cpu_before = {"proxy": proc.cpu_seconds(), **{k: p.cpu_seconds() for k, p in infra.items()}}
    machine_before, self_before = machine_busy_seconds(), self_cpu_seconds()
    res = loadgen.run_wrk(url, seconds=args.duration, connections=args.connections,
                          script=scripts["keys"], args=(keys_file, "random", str(ctx["seed"])), cpus=wrk_cpus)
    cpu_after = {"proxy": proc.cpu_seconds(), **{k: p.cpu_seconds() for k, p in infra.items()}}
    machine_after, self_after = machine_busy_seconds(), self_cpu_seconds()
    calls_after = redis_calls(rc)
    gw_after = servers.gateway_metrics(proc) if cfg.gateway else {}
    ctx["seed"] += 1
    n = max(res.requests, 1)
    if res.failed:
        raise RuntimeError(f"{cfg.name}: {res.failed} failed requests {res.errors} of {res.requests}"
                           + statuses_seen(proc))
    row = {
        "requests": res.requests,
        "seconds": round(res.seconds, 3),
        "rps": round(res.rps, 1),
        "p50_ms": res.latency_us["p50"] / 1000,
        "p99_ms": res.latency_us["p99"] / 1000,
        "p999_ms": res.latency_us["p999"] / 1000,
        "cpu_us_per_req": round((cpu_after["proxy"] - cpu_before["proxy"]) * 1e6 / n, 1),
        "upstream_cpu_us_per_req": round((cpu_after["upstream"] - cpu_before["upstream"]) * 1e6 / n, 1),
        "redis_cpu_us_per_req": round((cpu_after["redis"] - cpu_before["redis"]) * 1e6 / n, 1),
        "wrk_cpu_us_per_req": round(res.cpu_seconds * 1e6 / n, 1),
        "proxy_cpu_util": round((cpu_after["proxy"] - cpu_before["proxy"]) / res.seconds, 3),
    }
    # CPU that no process of ours used: other work on the machine disturbing the measurement.
    ours = sum(cpu_after[k] - cpu_before[k] for k in cpu_after) + res.cpu_seconds + (self_after - self_before)
    row["foreign_cpu_cores"] = round(max(0.0, (machine_after - machine_before) - ours) / res.seconds, 3)
    delta = {c: calls_after.get(c, 0) - calls_before.get(c, 0) for c in calls_after}
    delta = {c: d for c, d in delta.items() if d and c != "info"}  # our own INFO calls
    executed = sum(delta.values())
    in_scripts = sum(d for c, d in delta.items() if c in ctx["script_commands"])
    row["redis"] = {
        "commands_per_req": round(executed / n, 5),
        "sent_per_req": round((executed - in_scripts) / n, 5),
        "by_command_per_req": {c: round(d / n, 5) for c, d in sorted(delta.items(), key=lambda x: -x[1])},
    }
    if cfg.gateway:
        hits = gw_after.get("gateway_cache_hits_total", 0) - gw_before.get("gateway_cache_hits_total", 0)
        misses = gw_after.get("gateway_cache_misses_total", 0) - gw_before.get("gateway_cache_misses_total", 0)
        lookups = hits + misses
        resyncs = gw_after.get("gateway_cache_resyncs_total", 0) - gw_before.get("gateway_cache_resyncs_total", 0)
        # A resync (the revocation channel went quiet for SILENCE_LIMIT) empties the cache.
        row["cache"] = {"hits": int(hits), "misses": int(misses),
                        "hit_ratio": round(hits / lookups, 4) if lookups else None,
                        "entries": int(gw_after.get("gateway_cache_entries", 0)), "resyncs": int(resyncs)}
    return row


def statuses_seen(proc: Proc) -> str:
    """With --access-log: the gateway's answers by status and outcome so far, else a hint."""
    log = proc.extra.get("access_log")
    if log is None:
        return " (rerun with --access-log to see which statuses)"
    counts = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            counts[f"{entry['status']} {entry['outcome']}"] += 1
        except (ValueError, KeyError, TypeError):
            continue
    return f"; the gateway's access log ({log}): {dict(counts.most_common())}"


def median_row(rows: list[dict]) -> dict:
    def med(key: str, sub: str | None = None):
        vals = [(r[sub] if sub else r)[key] for r in rows if (r[sub] if sub else r).get(key) is not None]
        return statistics.median(vals) if vals else None

    out = {k: med(k) for k in ("rps", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_req", "upstream_cpu_us_per_req",
                               "redis_cpu_us_per_req", "wrk_cpu_us_per_req", "proxy_cpu_util")}
    out["max_foreign_cpu_cores"] = max(r["foreign_cpu_cores"] for r in rows)
    out["redis_commands_per_req"] = med("commands_per_req", "redis")
    out["redis_sent_per_req"] = med("sent_per_req", "redis")
    if "cache" in rows[0]:
        out["cache_hit_ratio"] = med("hit_ratio", "cache")
    return out


# -- the usage history's fold, amortized -----------------------------------------------------

def history_fold_cost(redis_port: int, key_ids: list[str]) -> dict:
    """Executed commands of a representative fold, which a measured run is too short to see: one
    node's hashes of an hour and of its day, holding every key of the bench (at the bench's mix
    every key is used in every hour), written and folded through the gateway's own ledger as a
    gateway folds its own once the hour (the day) is over. An hour 30 days back: its buckets are
    new (one node an hour, the common case) and still kept. INFO commandstats around each fold."""
    import asyncio

    from gateway.usage import HOUR_MS, HistoryWrite

    client = redis.Redis(port=redis_port)
    hour = int(time.time() * 1000) // HOUR_MS - 30 * 24
    counts = {k: (40, 0, 3, 0, 1) for k in key_ids}

    def executed(before: dict[str, int]) -> int:
        after = redis_calls(client)
        return sum(after[c] - before.get(c, 0) for c in after if c != "info")

    async def run() -> dict:
        store = store_mod.KeyStore(store_mod.connect(f"redis://127.0.0.1:{redis_port}/0", timeout=30), "gw")
        try:
            ids = list(counts)
            for i in range(0, len(ids), 2048):  # (as gateway.tasks.USAGE_CHUNK: a script unpacks them)
                part = {k: counts[k] for k in ids[i:i + 2048]}
                await store.ledger.write("bench_fold", 0, {}, HistoryWrite({hour: part}, {hour // 24: part}))
            before = redis_calls(client)
            assert await store.ledger.fold_hour("bench_fold", hour)
            per_hour = executed(before)
            before = redis_calls(client)
            assert await store.ledger.fold_day("bench_fold", hour // 24)
            return {"keys": len(key_ids), "executed_hour_fold": per_hour, "executed_day_fold": executed(before)}
        finally:
            await store.redis.aclose()

    out = asyncio.run(run())
    # What one process's folds cost an hour: its hour, and a 24th of its day.
    out["executed_per_hour"] = round(out["executed_hour_fold"] + out["executed_day_fold"] / 24, 1)
    out["per_key_hour"] = round(out["executed_hour_fold"] / max(len(key_ids), 1), 3)
    out["per_key_day"] = round(out["executed_day_fold"] / max(len(key_ids), 1), 3)
    return out


# -- memory ----------------------------------------------------------------------------------

def redis_memory(redis_port: int, n: int, keys_per_org: int, keep: int) -> tuple[dict, list[str]]:
    """used_memory per key for ``n`` keys in an empty Redis, plus a per-structure breakdown.

    Then every key is used once through the gateway's own last-used path (a UsageBuffer
    flushed into a node hash, then folded into the base as at shutdown), and measured again.
    """
    url = f"redis://127.0.0.1:{redis_port}/0"
    client = redis.Redis(port=redis_port)
    try:
        before = client.info("memory")
        started = time.monotonic()
        secrets_kept = keyfill.create_keys(url, n, keys_per_org=keys_per_org, keep=max(keep, 200))
        took = time.monotonic() - started
        after = client.info("memory")
        sample = secrets_kept[:200]
        ids = [key_format.parse_key(s).key_id for s in sample]
        names = store_mod.KeyStore(client, "gw")  # only for its key names

        def usage(keys: list[str]) -> float:
            return statistics.mean(client.memory_usage(k, samples=0) or 0 for k in keys)

        orgs = sorted({keyfill.org_for(i, keys_per_org) for i in range(len(sample))})
        try:  # MEMORY USAGE of each structure the store writes (its key-name helpers are private)
            breakdown = {
                "record_hash": usage([names._rec(i) for i in ids]),
                "org_index_zset_share": usage([names._org_keys(o) for o in orgs]) / keys_per_org,
            }
        except AttributeError:
            breakdown = {}
        total = after["used_memory"] - before["used_memory"]
        result = {
            "keys": n,
            "keys_per_org": keys_per_org,
            "scopes_per_key": len(keyfill.SCOPES),
            "redis_keys": client.dbsize(),
            "used_memory_bytes": total,
            "bytes_per_key": round(total / n, 1),
            "dataset_bytes_per_key": round((after["used_memory_dataset"] - before["used_memory_dataset"]) / n, 1),
            "rss_bytes_per_key": round((after["used_memory_rss"] - before["used_memory_rss"]) / n, 1),
            "memory_usage_breakdown_bytes_per_key": {k: round(v, 1) for k, v in breakdown.items()},
            "create_rate_keys_per_s": round(n / took),
        }
        try:
            result["after_every_key_was_used"] = _memory_after_use(client, url, n, before["used_memory"])
        except (AttributeError, ImportError) as exc:  # a gateway without the usage ledger
            result["after_every_key_was_used"] = {"error": repr(exc)}
        return result, secrets_kept
    finally:
        client.close()


def _memory_after_use(client: redis.Redis, url: str, n: int, empty_used_memory: int) -> dict:
    """Use every key once through the gateway's last-used path; memory per key then."""
    import asyncio

    from gateway.metrics import Metrics
    from gateway.tasks import flush_usage
    from gateway.usage import UsageBuffer

    ids = [k.decode().split("{", 1)[1].rstrip("}") for k in client.scan_iter("gw:key:*", count=10_000)]
    now_ms = int(time.time() * 1000)

    async def run() -> dict:
        store = store_mod.KeyStore(store_mod.connect(url, timeout=30), "gw")
        buf = UsageBuffer()
        try:
            for key_id in ids:
                buf.add(key_id, now_ms)
            started = time.monotonic()
            assert await flush_usage(store, buf, Metrics())
            flushed = time.monotonic() - started
            node_bytes = client.memory_usage(store.ledger.node_key(buf.node_id), samples=0)
            buf.closing = True  # the shutdown path: fold this node's hash into the base
            started = time.monotonic()
            assert await flush_usage(store, buf, Metrics())
            folded = time.monotonic() - started
            buckets = [k for k in client.scan_iter(store.ledger.base_prefix + "*", count=10_000)]
            sample = buckets[:: max(1, len(buckets) // 500)]
            base_bytes = statistics.mean(client.memory_usage(k, samples=0) for k in sample) * len(buckets)
            return {"keys_used": len(ids), "flush_seconds": round(flushed, 2), "fold_seconds": round(folded, 2),
                    "live_node_hash_bytes_per_used_key": round(node_bytes / len(ids), 1),
                    "usage_base_bytes_per_used_key": round(base_bytes / len(ids), 1),
                    "usage_base_buckets": len(buckets)}
        finally:
            await store.redis.aclose()

    out = asyncio.run(run())
    time.sleep(0.2)  # let Redis drop the closed connections' buffers
    out["bytes_per_key"] = round((client.info("memory")["used_memory"] - empty_used_memory) / n, 1)
    return out


def gateway_rss(procs: Processes, ctx: dict, redis_proc: Proc, secrets: list[str], args) -> dict:
    """A fresh gateway's VmRSS idle, then after every one of ``secrets`` was verified once (cached)."""
    keys_file = procs.workdir / "rss_keys.txt"
    keys_file.write_text("\n".join(secrets) + "\n")
    gw = servers.start_gateway(procs, "gateway-rss", ctx["upstream"], redis_proc, ctx["scopes_file"],
                               extra=("--cache-size", str(max(len(secrets), 100_000))))
    try:
        time.sleep(1.0)
        idle = vm_rss_kib(gw.pid)
        started = time.monotonic()
        res = loadgen.run_wrk(f"http://127.0.0.1:{gw.port}{PATH}", seconds=len(secrets) / 300 + 60,
                              connections=args.connections, script=ctx["scripts"]["keys_once"],
                              args=(str(keys_file), "sequential"), cpus=procs.infra_cpus if args.pin else None)
        took = time.monotonic() - started
        if res.failed:
            raise RuntimeError(f"gateway-rss warm-up: {res.failed} failed requests {res.errors}")
        time.sleep(2.5)  # let the last-used flushes of the warm-up finish
        metrics = servers.gateway_metrics(gw)
        warm = vm_rss_kib(gw.pid)
        entries = int(metrics.get("gateway_cache_entries", 0))
        return {
            "cached_keys": entries,
            "rss_idle_mib": round(idle / 1024, 1),
            "rss_warm_mib": round(warm / 1024, 1),
            "rss_bytes_per_cached_key": round((warm - idle) * 1024 / entries, 1) if entries else None,
            "cold_fill_rps": round(res.requests / took, 1),
        }
    finally:
        procs.stop(gw)


# -- report ----------------------------------------------------------------------------------

def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def print_report(result: dict) -> None:
    med = result["medians"]
    print()
    print(f"{'config':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>11} {'Redis cmd/req':>14}")
    for name, label in result["configs"].items():
        m = med[name]
        rc = m.get("redis_commands_per_req")
        print(f"{label:<34} {m['rps']:>9.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['cpu_us_per_req']:>11.1f} "
              f"{'' if not rc else format(rc, '.4f'):>14}")
    print()
    for key, value in result["ratios"].items():
        print(f"  {key}: {value}")
    mem = result.get("redis_memory")
    if mem:
        print(f"  redis used_memory per key ({mem['keys']:,} keys): {mem['bytes_per_key']} bytes "
              f"(breakdown {mem['memory_usage_breakdown_bytes_per_key']})")
        used = mem.get("after_every_key_was_used", {})
        if "bytes_per_key" in used:
            print(f"  ... after every key was used once (usage folded into the base): {used['bytes_per_key']} bytes "
                  f"(usage base {used['usage_base_bytes_per_used_key']} bytes/key; a live gateway's node hash "
                  f"{used['live_node_hash_bytes_per_used_key']} bytes/key used)")
    rss = result.get("gateway_rss")
    if rss:
        print(f"  gateway RSS with {rss['cached_keys']:,} cached keys: {rss['rss_warm_mib']} MiB "
              f"(idle {rss['rss_idle_mib']} MiB, {rss['rss_bytes_per_cached_key']} bytes/cached key)")


def git_state() -> dict:
    """The commit measured and which files of the gateway differed from it (read-only git calls)."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=BENCH.parent, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    status = subprocess.run(["git", "status", "--porcelain", "--", "gateway", "scopes.yaml", "pyproject.toml"],
                            cwd=BENCH.parent, capture_output=True, text=True).stdout
    changed = [ln[3:] for ln in status.splitlines() if ln.strip()]
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_gateway_changes": changed}


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    try:
        import uvloop  # noqa: F401
        loop = "uvloop"
    except ImportError:
        loop = "asyncio (uvloop not installed)"
    import aiohttp

    return {"cpu_model": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "aiohttp": aiohttp.__version__, "event_loop": loop,
            "nginx": os.popen(f"{servers.NGINX} -v 2>&1").read().strip(),
            "redis": os.popen("redis-server --version").read().strip(),
            "wrk": os.popen("wrk -v 2>&1").read().splitlines()[0].strip()}


# -- main ------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="~1 s per config, tiny key counts: checks it runs (CI)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each measured wrk run (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before each measured run (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every config once, in order (default 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections, one thread (default 50)")
    p.add_argument("--keys", type=int, default=10_000, help="keys wrk rotates among (default 10,000)")
    p.add_argument("--memory-keys", type=int, default=100_000,
                   help="keys inserted to measure Redis memory per key (default 100,000; the issue asks 1,000,000)")
    p.add_argument("--keys-per-org", type=int, default=10, help="keys per org in the memory test (default 10)")
    p.add_argument("--rss-keys", type=int, default=100_000, help="keys cached before reading gateway RSS (default 100,000)")
    p.add_argument("--only", default="", help="comma-separated config names to run (default all)")
    p.add_argument("--skip-memory", action="store_true", help="skip the Redis memory and gateway RSS measurements")
    p.add_argument("--profile-limited", action="store_true",
                   help="--profile the gateway of config 4l (every key limited) instead of config 4")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="after the rounds, profile the gateway (cache hit) under load with py-spy for SECONDS")
    p.add_argument("--max-foreign-load", type=float, default=0.1, metavar="CORES",
                   help="a run during which other processes used more CPU than this is measured again (default 0.1)")
    p.add_argument("--quiet-wait", type=float, default=120.0, metavar="SECONDS",
                   help="before each run, wait up to this long for the machine to be quiet (default 120)")
    p.add_argument("--retries", type=int, default=2, help="how many times such a run is measured again (default 2)")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    p.add_argument("--output", type=Path, default=BENCH / "results" / "latest.json")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs and logs)")
    p.add_argument("--access-log", action="store_true",
                   help="keep each gateway's access log in the temp dir (costs it CPU), and count its statuses "
                        "when requests fail")
    args = p.parse_args()
    if args.smoke:
        args.duration, args.warmup, args.rounds = 1.0, 0.5, 1
        args.keys, args.memory_keys, args.rss_keys = 200, 2000, 500
        args.retries, args.quiet_wait = 0, 0.0  # smoke only checks that it runs
    return args


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _raise_open_files(connections: int) -> None:
    """wrk, the proxy and the upstream each hold a socket per connection: raise the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections * 4 + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))


def main() -> int:
    args = parse_args()
    _raise_open_files(args.connections)  # inherited by every process started below
    # SIGTERM (CI timeouts, kill) unwinds like Ctrl-C, through the finally that stops everything.
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs = Processes(workdir, pin=args.pin)
    started = time.monotonic()
    ok = False
    try:
        result = run(args, procs, workdir)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep_tmp or not ok:
            print(f"(temp dir with configs and logs: {workdir})", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"\nwrote {args.output} ({result['wall_seconds']} s)")
    if args.smoke:
        return smoke_check(result)
    return 0


def smoke_check(result: dict) -> int:
    bad = [name for name, m in result["medians"].items()
           if not (m["rps"] and m["rps"] > 0 and m["p99_ms"] and m["cpu_us_per_req"] and m["cpu_us_per_req"] > 0)]
    if result.get("redis_memory", {}).get("bytes_per_key", 1) <= 0 or result.get("gateway_rss", {}).get("cached_keys", 1) <= 0:
        bad.append("memory")
    if bad:
        print(f"smoke: missing numbers for {bad}", file=sys.stderr)
        return 1
    print("smoke: OK")
    return 0


def run(args, procs: Processes, workdir: Path) -> dict:
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    log(f"temp dir {workdir}; proxy CPUs {sorted(procs.proxy_cpus)}, wrk/upstream/Redis CPUs "
        f"{sorted(procs.infra_cpus)}{'' if args.pin else ' (not pinned)'}")
    src, src_sha = servers.snapshot_gateway(workdir)
    git = {**git_state(), "gateway_snapshot_sha256": src_sha}
    scopes_file = src / "scopes.yaml"
    redis_proc = servers.start_redis(procs, "redis")
    upstream = servers.start_upstream(procs)
    rc = redis.Redis(port=redis_proc.port)

    log(f"creating {args.keys:,} keys")
    secrets = keyfill.create_keys(f"redis://127.0.0.1:{redis_proc.port}/0", args.keys)
    keys_file = workdir / "keys.txt"
    keys_file.write_text("\n".join(secrets) + "\n")
    sample_record = f"gw:key:{{{key_format.parse_key(secrets[0]).key_id}}}"
    ctx = {"procs": procs, "redis": redis_proc, "upstream": upstream, "redis_client": rc, "keys_file": keys_file,
           "scripts": loadgen.write_scripts(workdir), "seed": 1, "scopes_file": scopes_file,
           "script_commands": script_commands(src / "gateway" / "store")}

    only = set(filter(None, args.only.split(",")))
    configs = [
        Config("direct", "1 direct to upstream (nginx)", None),
        Config("nginx", "2 nginx proxy, keep-alive", lambda: servers.start_nginx_proxy(procs, upstream)),
        Config("aiohttp", "3 aiohttp pass-through", lambda: servers.start_baseline(procs, upstream)),
        Config("aiohttp_redis", "3r aiohttp + 1 HGETALL/req",
               lambda: servers.start_baseline(procs, upstream, redis=redis_proc, redis_key=sample_record)),
        Config("gateway_hit", "4 gateway, cache hit",
               lambda: servers.start_gateway(procs, "gateway-hit", upstream, redis_proc, scopes_file,
                                            access_log=args.access_log),
               gateway=True, warm_all_keys=True, steady_warm=True),
        Config("gateway_hit_limited", "4l gateway, cache hit, every key limited",
               lambda: servers.start_gateway(procs, "gateway-hit-limited", upstream, redis_proc, scopes_file,
                                             extra=("--default-limits", LIMITED), access_log=args.access_log),
               gateway=True, warm_all_keys=True, steady_warm=True),
        Config("gateway_miss", "5 gateway, cache miss (ttl 0)",
               lambda: servers.start_gateway(procs, "gateway-miss", upstream, redis_proc, scopes_file,
                                             extra=("--cache-ttl", "0"), access_log=args.access_log),
               gateway=True),
    ]
    configs = [c for c in configs if not only or c.name in only]

    rows: dict[str, list[dict]] = {c.name: [] for c in configs}
    for r in range(args.rounds):
        for cfg in configs:
            row = measure(cfg, args, ctx)
            rows[cfg.name].append(row)
            log(f"round {r + 1}/{args.rounds} {cfg.name:<14} {row['rps']:>8.0f} req/s  p50 {row['p50_ms']:.2f} ms  "
                f"p99 {row['p99_ms']:.2f} ms  {row['cpu_us_per_req']:.1f} µs/req  "
                f"redis {row['redis']['commands_per_req']:.4f} cmd/req"
                + (f"  cache hit {row['cache']['hit_ratio']} ({row['cache']['resyncs']} resyncs)" if "cache" in row else "")
                + f"  (others: {row['foreign_cpu_cores']:.2f} cores)")
    medians = {name: median_row(rs) for name, rs in rows.items()}

    result: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "machine": machine(),
        "git": git,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pinning": {"proxy_cpus": sorted(procs.proxy_cpus), "infra_cpus": sorted(procs.infra_cpus),
                    "pinned": args.pin},
        "configs": {c.name: c.label for c in configs},
        "medians": medians,
        "runs": rows,
    }
    m = medians.get
    hit, base, base_r, miss = m("gateway_hit"), m("aiohttp"), m("aiohttp_redis"), m("gateway_miss")
    ratios: dict = {}
    if hit and base:
        ratios["(4)/(3) req/s"] = ratio(hit["rps"], base["rps"])
        ratios["(4) vs (3) p99 ms"] = f"{hit['p99_ms']:.2f} vs {base['p99_ms']:.2f} (x{ratio(hit['p99_ms'], base['p99_ms'])})"
        ratios["(4)/(3) CPU µs/req"] = ratio(hit["cpu_us_per_req"], base["cpu_us_per_req"])
    if miss and base_r:
        ratios["(5)/(3r) req/s"] = ratio(miss["rps"], base_r["rps"])
        ratios["(5) vs (3r) p99 ms"] = f"{miss['p99_ms']:.2f} vs {base_r['p99_ms']:.2f} (x{ratio(miss['p99_ms'], base_r['p99_ms'])})"
    if hit:
        fold = result["history_fold"] = history_fold_cost(
            redis_proc.port, [key_format.parse_key(s).key_id for s in secrets])
        amortized = fold["executed_per_hour"] / (hit["rps"] * 3600)
        fold["amortized_per_req"] = round(amortized, 6)
        ratios["(4) Redis commands/req, executed in the measured run"] = hit["redis_commands_per_req"]
        ratios["(4) the history's hourly fold, amortized per request at this request rate "
               f"({fold['executed_per_hour']:,.0f} commands an hour for {fold['keys']:,} keys)"] = round(amortized, 5)
        ratios["(4) Redis commands/req, executed incl. the amortized hourly fold (at this request rate) "
               "(target <= 0.001)"] = round(hit["redis_commands_per_req"] + amortized, 5)
        ratios["(4) Redis commands/req, sent by the gateway (EVALSHA counted once)"] = hit["redis_sent_per_req"]
        ratios["(4) cache hit ratio during the measured runs"] = hit.get("cache_hit_ratio")
    if m("nginx") and base:
        ratios["(2)/(3) req/s"] = ratio(m("nginx")["rps"], base["rps"])
        ratios["(3)/(2) CPU µs/req"] = ratio(base["cpu_us_per_req"], m("nginx")["cpu_us_per_req"])
    result["ratios"] = ratios

    if args.profile > 0:
        import profile_gateway

        limited = ("--default-limits", LIMITED) if args.profile_limited else ()
        log(f"profiling the gateway (cache hit{', every key limited' if limited else ''}) for {args.profile:.0f} s "
            "with py-spy")
        gw = servers.start_gateway(procs, "gateway-profile", upstream, redis_proc, scopes_file, extra=limited)
        try:
            result["profile"] = profile_gateway.profile(gw, f"http://127.0.0.1:{gw.port}{PATH}", args, ctx,
                                                        args.output.parent)
        finally:
            procs.stop(gw)
    if not args.skip_memory:
        mem_redis = servers.start_redis(procs, "redis-memory")
        log(f"Redis memory: inserting {args.memory_keys:,} keys into an empty Redis")
        memory, kept = redis_memory(mem_redis.port, args.memory_keys, args.keys_per_org, args.rss_keys)
        result["redis_memory"] = memory
        log(f"  {memory['bytes_per_key']} bytes/key")
        rss_secrets = kept[: args.rss_keys]
        if len(rss_secrets) < args.rss_keys:  # fewer memory keys than RSS keys: add some
            rss_secrets += keyfill.create_keys(f"redis://127.0.0.1:{mem_redis.port}/0",
                                               args.rss_keys - len(rss_secrets), org_prefix="org_rss")
        log(f"gateway RSS: caching {len(rss_secrets):,} keys")
        result["gateway_rss"] = gateway_rss(procs, ctx, mem_redis, rss_secrets, args)
        procs.stop(mem_redis)
    return result


if __name__ == "__main__":
    sys.exit(main())
