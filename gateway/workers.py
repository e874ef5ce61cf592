"""`gateway serve --workers N`: N gateway processes on one port (SO_REUSEPORT) under a supervisor.

The supervisor starts the workers, restarts one that dies, passes SIGHUP on (scopes reload),
and on SIGTERM/SIGINT stops them all and waits (each worker flushes its last-used buffer).
It serves the ops listener itself: /healthz and /readyz sum up the workers', /metrics merges
theirs with a ``worker`` label. Each worker's own ops listener is on a loopback port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway import config
from gateway.config import ServeSettings
from gateway.aiohttp_runner import ops_envelope_middleware

log = logging.getLogger("gateway")

WORKER_ENV = "GATEWAY_WORKER_ID"  # set in each worker; makes it bind with SO_REUSEPORT
STOP_DEADLINE = 20.0  # seconds a worker gets to finish requests and flush before SIGKILL
CRASH_LOOP = 3  # workers dying this many times in a row right after start: give up


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_environment(settings: ServeSettings, worker_id: int, ops_port: int) -> dict[str, str]:
    """The environment that makes a child `gateway serve` a worker with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    for f in msgspec.structs.fields(ServeSettings):
        value = getattr(settings, f.name)
        env[config.env_names(f.name)[0]] = ",".join(value) if isinstance(value, tuple) else str(value)
    env["GATEWAY_WORKERS"] = "1"
    env["GATEWAY_OPS_LISTEN"] = f"127.0.0.1:{ops_port}"
    env[WORKER_ENV] = str(worker_id)
    return env


@dataclass
class Worker:
    id: int
    ops_port: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restarts: int = 0

    @property
    def ops(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


@dataclass
class Supervisor:
    settings: ServeSettings
    workers: list[Worker] = field(default_factory=list)
    stopping: bool = False

    async def spawn(self, worker: Worker) -> None:
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", env=worker_environment(self.settings, worker.id, worker.ops_port),
        )
        worker.started = time.monotonic()
        log.info("worker %d started (pid %d)", worker.id, worker.proc.pid)

    async def watch(self, worker: Worker, failed: asyncio.Event) -> None:
        """Restart the worker whenever it dies, unless the supervisor is stopping."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self.stopping:
                return
            quick = time.monotonic() - worker.started < 5
            worker.quick_deaths = worker.quick_deaths + 1 if quick else 0
            log.error("worker %d (pid %d) exited with %s", worker.id, worker.proc.pid, code)
            if worker.quick_deaths >= CRASH_LOOP:
                log.error("worker %d keeps dying right after start; stopping", worker.id)
                failed.set()
                return
            await asyncio.sleep(0.5 * worker.quick_deaths)
            worker.restarts += 1
            await self.spawn(worker)

    def signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.running:
                w.proc.send_signal(sig)

    async def stop(self) -> bool:
        """SIGTERM every worker and wait; SIGKILL what is still there after the deadline."""
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        clean = True
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                code = await asyncio.wait_for(w.proc.wait(), STOP_DEADLINE)
                clean = clean and code == 0
            except asyncio.TimeoutError:
                log.error("worker %d did not stop within %ss; killing it", w.id, STOP_DEADLINE)
                w.proc.kill()
                await w.proc.wait()
                clean = False
        return clean


def merge_metrics(texts: dict[int, str]) -> str:
    """Prometheus text of several workers as one exposition, each sample labelled ``worker``."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    for worker_id, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            _, _, lines = families.setdefault(family.name, (family.type, family.documentation, []))
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(worker_id)}
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{sample.name}{{{rendered}}} {_number(sample.value)}")
    out = []
    for name, (kind, doc, lines) in families.items():
        out.append(f"# HELP {name} {_escape(doc)}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)
    return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def make_supervisor_ops_app(sup: Supervisor) -> web.Application:
    """The ops listener of a multi-worker gateway."""

    async def fetch(session: aiohttp.ClientSession, w: Worker, path: str) -> tuple[int, str]:
        try:
            async with session.get(w.ops + path, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return 0, ""

    async def gather(path: str) -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(fetch(session, w, path) for w in sup.workers))

    async def healthz(_: web.Request) -> web.Response:
        alive = [w.running for w in sup.workers]
        return web.json_response({"status": "ok" if all(alive) else "degraded", "workers_alive": sum(alive),
                                  "workers": len(alive)}, status=200 if all(alive) else 503)

    async def readyz(_: web.Request) -> web.Response:
        statuses = [status for status, _ in await gather("/readyz")]
        ready = all(s == 200 for s in statuses)
        return web.json_response({"ready": ready, "workers_ready": sum(s == 200 for s in statuses),
                                  "workers": len(statuses)}, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        results = await gather("/metrics")
        texts = {w.id: text for w, (status, text) in zip(sup.workers, results, strict=True) if status == 200}
        return web.Response(text=merge_metrics(texts), content_type="text/plain", charset="utf-8")

    app = web.Application(middlewares=[ops_envelope_middleware])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def run_supervisor(settings: ServeSettings) -> int:
    """Run ``settings.workers`` workers until SIGTERM/SIGINT; 0 when all stopped cleanly."""
    from gateway.app import split_listen

    sup = Supervisor(settings, [Worker(i, free_loopback_port()) for i in range(settings.workers)])
    loop = asyncio.get_running_loop()
    stop, failed = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: sup.signal_all(signal.SIGHUP))
    runner = web.AppRunner(make_supervisor_ops_app(sup), access_log=None, handle_signals=False,
                           keepalive_timeout=settings.head_timeout)  # idle and dribbling clients closed
    await runner.setup()
    watchers: list[asyncio.Task] = []
    try:
        host, port = split_listen(settings.ops_listen)
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        for w in sup.workers:
            await sup.spawn(w)
            watchers.append(asyncio.create_task(sup.watch(w, failed)))
        log.info("gateway on http://%s with %d workers (ops on http://%s)",
                 settings.listen, settings.workers, settings.ops_listen)
        await asyncio.wait([asyncio.create_task(stop.wait()), asyncio.create_task(failed.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        clean = await sup.stop()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await runner.cleanup()
    return 0 if clean and not failed.is_set() else 1
