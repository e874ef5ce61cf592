"""The servers a benchmark run starts: Redis, the nginx echo upstream, and the proxies under test."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

from procs import Proc, Processes, free_port, http_get, wait_for_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
REDIS = "redis-server"

# What the upstream answers to every request: a small JSON document, as a list endpoint might.
UPSTREAM_BODY = '{"data":[{"id":"task_01","title":"Clean room 12","status":"open"}],"next_cursor":null}'

_NGINX_COMMON = """
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{body}
}}
"""

_UPSTREAM_BODY = """
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{payload}';
        }}
    }}
"""

_PROXY_BODY = """
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
"""


def start_redis(procs: Processes, name: str) -> Proc:
    """A throw-away redis-server with no persistence (nothing here measures disk writes)."""
    port = free_port()
    d = procs.workdir / name
    d.mkdir(exist_ok=True)
    proc = procs.start(name, [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                              "--dir", str(d), "--daemonize", "no", "--maxmemory-policy", "noeviction"],
                       role="infra", port=port)
    wait_for_port(proc, port)
    return proc


def _nginx(procs: Processes, name: str, role: str, body: str) -> Proc:
    d = procs.workdir / name
    d.mkdir(exist_ok=True)
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = d / "nginx.conf"
    conf.write_text(_NGINX_COMMON.format(d=d, user=user, body=body))
    port = int(re.search(r"listen 127\.0\.0\.1:(\d+)", body).group(1))
    proc = procs.start(name, [NGINX, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")], role=role, port=port)
    wait_for_port(proc, port)
    return proc


def start_upstream(procs: Processes) -> Proc:
    """nginx answering 200 with UPSTREAM_BODY to everything: cheap, keep-alive, never the bottleneck."""
    return _nginx(procs, "upstream", "infra", _UPSTREAM_BODY.format(port=free_port(), payload=UPSTREAM_BODY))


def start_nginx_proxy(procs: Processes, upstream: Proc) -> Proc:
    """Config 2: nginx as a plain reverse proxy with a keep-alive upstream pool, one worker."""
    return _nginx(procs, "nginx-proxy", "proxy", _PROXY_BODY.format(port=free_port(), upstream=upstream.port))


def start_baseline(procs: Processes, upstream: Proc, *, redis: Proc | None = None, redis_key: str = "") -> Proc:
    """Config 3: bench/baseline_proxy.py, optionally with one HGETALL per request."""
    port = free_port()
    argv = [sys.executable, str(Path(__file__).with_name("baseline_proxy.py")),
            "--listen", f"127.0.0.1:{port}", "--upstream", f"http://127.0.0.1:{upstream.port}"]
    name = "baseline"
    if redis is not None:
        argv += ["--redis", f"redis://127.0.0.1:{redis.port}/0", "--redis-key", redis_key]
        name = "baseline-redis"
    proc = procs.start(name, argv, role="proxy", port=port)
    wait_for_port(proc, port)
    return proc


def snapshot_gateway(workdir: Path) -> tuple[Path, str]:
    """Copy gateway/ and scopes.yaml into the temp dir: every gateway of this run runs that copy.

    The working tree may change while a run goes on (others edit gateway/); without the copy,
    rounds would measure different code. Returns the copy's root and a SHA-256 over its files.
    """
    src = workdir / "src"
    shutil.copytree(ROOT / "gateway", src / "gateway", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "scopes.yaml", src / "scopes.yaml")
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    return src, digest.hexdigest()


def start_gateway(procs: Processes, name: str, upstream: Proc, redis: Proc, scopes: Path, *,
                  extra: tuple[str, ...] = (), access_log: bool = False) -> Proc:
    """`gateway serve` as shipped (one process); its access log (stdout) goes to /dev/null, or
    with ``access_log`` to NAME.access.log in the temp dir (proc.extra["access_log"])."""
    port, ops = free_port(), free_port()
    src = procs.workdir / "src"
    argv = [sys.executable, "-m", "gateway", "serve", "--listen", f"127.0.0.1:{port}",
            "--ops-listen", f"127.0.0.1:{ops}", "--upstream", f"http://127.0.0.1:{upstream.port}",
            "--redis", f"redis://127.0.0.1:{redis.port}/0", "--scopes", str(scopes), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if src.is_dir():  # the snapshot taken at the start of the run (see snapshot_gateway)
        env["PYTHONPATH"] = str(src)
    log = procs.workdir / f"{name}.access.log" if access_log else None
    proc = procs.start(name, argv, role="proxy", port=port, env=env, discard_stdout=log is None, cwd=procs.workdir,
                       stdout=log)
    proc.extra["ops"] = f"http://127.0.0.1:{ops}"
    if log is not None:
        proc.extra["access_log"] = log
    wait_for_port(proc, port)
    # Ready once Redis answers and, for the cache, once the revocation channel is subscribed:
    # until then the gateway (rightly) bypasses its cache.
    wait_until(lambda: http_get(proc.extra["ops"] + "/readyz")[0] == 200, f"{name} /readyz", proc=proc)
    wait_until(lambda: gateway_metrics(proc).get("gateway_cache_trusted") == 1.0, f"{name} cache trust", proc=proc)
    return proc


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def gateway_metrics(proc: Proc) -> dict[str, float]:
    """The gateway's unlabelled samples, plus labelled ones summed by name."""
    status, text = http_get(proc.extra["ops"] + "/metrics")
    if status != 200:
        raise RuntimeError(f"{proc.name} /metrics answered {status}")
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out
