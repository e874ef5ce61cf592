"""Profile a gateway process under wrk load with py-spy, and say where its time goes.

Writes, next to the results: profile.txt (py-spy's collapsed stacks), profile.svg (flame graph),
profile-native.txt (with C frames, when py-spy can unwind them) and returns a summary: the top
functions by own time, the top by inclusive time, and the share of samples owned by aiohttp's
client, aiohttp's server, the gateway's own code, redis-py, logging, prometheus_client, asyncio.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import loadgen

PY_SPY = str(Path(sys.executable).with_name("py-spy"))
RATE = 200  # samples per second

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_PKG = re.compile(r"(?:^|/)(gateway|aiohttp|redis|asyncio|logging|prometheus_client|yarl|multidict|msgspec|"
                  r"concurrent|selectors|json|http)/(.*)$")

_CLIENT = {"client.py", "client_reqrep.py", "client_proto.py", "connector.py", "client_exceptions.py", "tracing.py",
           "client_middlewares.py"}


def short_file(path: str) -> str:
    m = _PKG.search(path)
    return f"{m.group(1)}/{m.group(2)}" if m else path.rsplit("/", 1)[-1]


def owner(file: str) -> str | None:
    """Which part of the stack a frame in ``file`` belongs to; None: a shared helper, look further up."""
    pkg, _, rest = file.partition("/")
    if file in ("gateway/cli.py", "gateway/__main__.py"):
        return None  # the entry point: at the root of every stack
    if pkg == "gateway":
        # The gateway's own HTTP client, when it has one, is the counterpart of aiohttp's client.
        return ("upstream client (gateway/upstream.py)" if rest in ("upstream.py", "upstreamconn.py")
                else "gateway code")
    if pkg == "aiohttp":
        if rest in _CLIENT:
            return "aiohttp client"
        if rest.startswith("web") or rest == "http_websocket.py":
            return "aiohttp server"
        return None  # streams, helpers, http_writer, payload...: used by both sides
    if pkg == "redis":
        return "redis-py"
    if pkg == "logging":
        return "logging (access log)"
    if pkg == "prometheus_client":
        return "prometheus_client (metrics)"
    return None


def parse(raw: str) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy raw output -> [(frames root..leaf as (function, short file)), count]."""
    out = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part)
            if m:
                frames.append((m.group("func"), short_file(m.group("file"))))
            else:
                frames.append((part, ""))
        out.append((frames, int(count)))
    return out


def summarize(stacks: list[tuple[list[tuple[str, str]], int]], top: int = 15) -> dict:
    # Only the event loop's thread: py-spy takes the thread pool's workers, parked in
    # SimpleQueue.get, for busy threads here, so their samples would read as CPU time.
    other_threads = sum(c for frames, c in stacks if any(p == "threading.py" for _, p in frames))
    stacks = [(frames, c) for frames, c in stacks if not any(p == "threading.py" for _, p in frames)]
    total = sum(c for _, c in stacks) or 1
    own: Counter = Counter()
    inclusive: Counter = Counter()
    share: Counter = Counter()
    parts: Counter = Counter()  # inclusive time of the gateway's own functions and what they call
    for frames, count in stacks:
        if not frames:
            continue
        leaf = frames[-1]
        own[f"{leaf[0]} ({leaf[1]})"] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            inclusive[name] += count
        for name in {f"{f} ({p})" for f, p in frames
                     if p.startswith("gateway/") and p not in ("gateway/cli.py", "gateway/__main__.py")
                     and f not in ("handle", "router_errors")}:
            parts[name] += count
        category = next((o for f, p in reversed(frames) if (o := owner(p))), None)
        if category is None:
            # With uvloop the loop's own work (I/O, callbacks) is C under asyncio.run: the leaf
            # Python frame is then run (asyncio/runners.py).
            category = "event loop" if leaf[1].startswith(("asyncio/", "selectors", "uvloop")) else "other"
        share[category] += count

    def pct(counter: Counter, n: int) -> list[dict]:
        return [{"function": k, "percent": round(100 * v / total, 1)} for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "other_thread_samples_dropped": other_threads,
        "top_own": pct(own, top),
        "top_inclusive": pct(inclusive, 30),
        "gateway_functions_inclusive": pct(parts, 20),
        "share": {k: round(100 * v / total, 1) for k, v in share.most_common()},
    }


def _record(pid: int, seconds: float, fmt: str, out: Path, native: bool = False) -> str | None:
    argv = [PY_SPY, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(RATE),
            "--format", fmt, "-o", str(out)]
    if native:
        argv.append("--native")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not out.exists():
        return (done.stderr or done.stdout).strip().splitlines()[0] if (done.stderr or done.stdout) else "failed"
    return None


def _under_load(url: str, seconds: float, args, ctx: dict, action) -> tuple[object, loadgen.WrkResult]:
    """Run ``action()`` while wrk loads ``url`` (random keys) for ``seconds`` + 2."""
    box: dict = {}

    def load() -> None:
        box["wrk"] = loadgen.run_wrk(url, seconds=seconds + 2, connections=args.connections,
                                     script=ctx["scripts"]["keys"], args=(str(ctx["keys_file"]), "random", "99"),
                                     cpus=ctx["procs"].infra_cpus if args.pin else None)

    t = threading.Thread(target=load)
    t.start()
    try:
        threading.Event().wait(1.0)  # let the load settle
        result = action()
    finally:
        t.join()
    return result, box.get("wrk")


def profile(proc, url: str, args, ctx: dict, outdir: Path) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    seconds = args.profile
    loadgen.run_wrk(url, seconds=args.keys / 500 + 30, connections=args.connections,
                    script=ctx["scripts"]["keys_once"], args=(str(ctx["keys_file"]), "sequential"),
                    cpus=ctx["procs"].infra_cpus if args.pin else None)
    raw = outdir / "profile.txt"
    error, wrk = _under_load(url, seconds, args, ctx, lambda: _record(proc.pid, seconds, "raw", raw))
    if error:
        return {"error": f"py-spy: {error}"}
    summary = summarize(parse(raw.read_text()))
    summary["rps_while_profiling"] = round(wrk.rps, 1) if wrk else None
    summary["rate_hz"] = RATE
    summary["files"] = {"raw": str(raw)}
    svg = outdir / "profile.svg"
    if not _under_load(url, min(seconds, 10), args, ctx, lambda: _record(proc.pid, min(seconds, 10), "flamegraph", svg))[0]:
        summary["files"]["svg"] = str(svg)
    native = outdir / "profile-native.txt"
    error, _ = _under_load(url, min(seconds, 10), args, ctx,
                           lambda: _record(proc.pid, min(seconds, 10), "raw", native, native=True))
    if error:
        summary["native"] = {"error": error}
    else:
        n = summarize(parse(native.read_text()), top=25)
        summary["native"] = {"samples": n["samples"], "top_own": n["top_own"], "share": n["share"]}
        summary["files"]["native"] = str(native)
    return summary


if __name__ == "__main__":  # summarize an existing profile: python bench/profile_gateway.py profile.txt
    import json

    print(json.dumps(summarize(parse(Path(sys.argv[1]).read_text())), indent=2))
