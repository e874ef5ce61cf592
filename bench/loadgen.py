"""Drive wrk: one thread, N connections, an optional key per request from a file, JSON out of done()."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

WRK = shutil.which("wrk") or "/usr/bin/wrk"
MARK = "BENCH_JSON "

# done() prints one JSON line; latencies are in microseconds.
_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    "MARK", summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(75),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
""".replace("MARK", MARK)

# Keys from a file, one per line: "random" picks one per request, "sequential" walks the file
# once (stopping the run after the last one) -- that is how caches are warmed key by key.
_KEYS = r"""
local keys = {}
local mode = "random"
local idx = 0
local answered = 0
function init(args)
  for line in io.lines(args[1]) do keys[#keys + 1] = line end
  mode = args[2] or "random"
  math.randomseed(tonumber(args[3] or "1"))
end
function request()
  local k
  if mode == "random" then
    k = keys[math.random(#keys)]
  else
    idx = idx + 1
    k = keys[(idx - 1) % #keys + 1]
  end
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. k})
end
"""

# wrk's thread:stop() ends the requests but not the run (the main thread sleeps out -d), so a
# pass over the keys reports and exits by itself once every key has been answered.
_STOP_AFTER_ALL = r"""
local bad = 0
function response(status, headers, body)
  answered = answered + 1
  if status >= 400 then bad = bad + 1 end
  if answered >= #keys then
    io.write(string.format('MARK{"requests":%d,"duration_us":0,"bytes":0,' ..
      '"errors":{"connect":0,"read":0,"write":0,"status":%d,"timeout":0},"latency_us":{}}\n', answered, bad))
    io.flush()
    os.exit(0)
  end
end
""".replace("MARK", MARK)


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: dict
    latency_us: dict
    cpu_seconds: float  # wrk's own user + system time

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def write_scripts(workdir: Path) -> dict[str, Path]:
    scripts = {
        "plain": _DONE,
        "keys": _KEYS + _DONE,
        "keys_once": _KEYS + _STOP_AFTER_ALL + _DONE,
    }
    out = {}
    for name, text in scripts.items():
        path = workdir / f"wrk_{name}.lua"
        path.write_text(text)
        out[name] = path
    return out


def run_wrk(url: str, *, seconds: float, connections: int, script: Path, args: tuple[str, ...] = (),
            cpus: set[int] | None = None, timeout_s: int = 5) -> WrkResult:
    """Run wrk with one thread; returns what done() printed plus wrk's own CPU time."""
    argv = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s",
            "-s", str(script), url]
    if args:
        argv += ["--", *args]

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    # Only wrk is reaped in between, so the children's rusage delta is wrk's own CPU time.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=pin)
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    usage = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode(errors='replace')}")
    line = next((ln for ln in out.decode().splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.decode(errors='replace')}\n{err.decode(errors='replace')}")
    data = json.loads(line[len(MARK):])
    seconds = data["duration_us"] / 1e6 or wall  # a pass over the keys reports no duration
    return WrkResult(data["requests"], seconds, data["errors"], data["latency_us"], usage)

