"""Builds the gateway's aiohttp applications (proxy and ops listener) and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from typing import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from redis.exceptions import RedisError

from gateway import forward_auth
from gateway import accesslog
from gateway import store as store_mod
from gateway.cache import VerdictCache
from gateway.config import ServeSettings
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.proxy import STATE, GatewayState, handle, router_errors
from gateway.reload import RulesHolder
from gateway.scopes import RuleSet
from gateway.server import EnvelopeAppRunner
from gateway.signing import make_signer
from gateway.tasks import flush_usage, listen_for_revocations, usage_flusher
from gateway.throttle import FailureThrottle, KnownKeys
from gateway.upstream import UpstreamPool

log = logging.getLogger("gateway")

SHUTDOWN_FLUSH_DEADLINE = 5.0  # seconds; well inside a 30 s orchestrator grace period
# SECURITY: how long a connection may stay open without a complete request head (from accept,
# then after each response). aiohttp's own default is an hour, which lets slow or idle clients
# hold sockets nearly for ever; 75 s is the usual keep-alive and outlives load-balancer idles.
KEEPALIVE_TIMEOUT = 75.0


class ServerLog(logging.LoggerAdapter):
    """aiohttp's server logger, without the raw bytes of requests that failed to parse."""

    def process(self, msg, kwargs):
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            # SECURITY: aiohttp's parse errors quote the offending line, which may be an
            # Authorization or X-API-Key header: only the error class is logged, no traceback.
            # Worded as the admin API's filter words it, so one search finds both.
            kwargs["exc_info"] = None
            msg = f"malformed HTTP request refused ({type(exc).__name__}, status {exc.code}) from %s"
        return msg, kwargs


def make_app(
    settings: ServeSettings,
    *,
    clock: Callable[[], float] = time.time,
    rules: RuleSet | None = None,
) -> web.Application:
    """The proxy application; ``clock`` and ``rules`` are injectable for tests."""
    metrics = Metrics()
    cache = VerdictCache(
        max_size=settings.cache_size, ttl=settings.cache_ttl, negative_ttl=settings.negative_cache_ttl
    )
    metrics.add_cache(cache)
    holder = RulesHolder(settings.scopes, rules)
    holder.on_reload = lambda result: metrics.reloads.labels(result).inc()
    state = GatewayState(
        settings=settings,
        rules=holder,
        store=store_mod.KeyStore(store_mod.connect(settings.redis, timeout=settings.redis_timeout), settings.redis_prefix),
        cache=cache,
        metrics=metrics,
        clock=clock,
        throttle=FailureThrottle(limit=settings.auth_failure_limit, window=settings.auth_failure_window,
                                 max_clients=settings.throttle_max_clients, clock=clock),
        known_keys=KnownKeys(settings.cache_size),
        trusted_nets=tuple(ipaddress.ip_network(c, strict=False) for c in settings.trusted_proxies),
        upstream=settings.upstream.rstrip("/"),
        signer=make_signer(settings.signing_secrets, settings.upstream),
    )
    # The proxy must see raw targets such as "//x" or "/a/../b", so no path normalisation.
    app = web.Application(
        middlewares=[router_errors], client_max_size=settings.max_body_bytes,
        handler_args={"max_field_size": 16384, "keepalive_timeout": KEEPALIVE_TIMEOUT},
    )
    app[STATE] = state
    metrics.add_throttle(state.throttle)
    # "[\s\S]" and not ".": the router matches the decoded path, and "." stops at a newline
    # ("%0a"), which would skip the pipeline and its access-log line.
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle if settings.mode == "proxy" else forward_auth.check)
    if settings.mode == "proxy":  # forward-auth answers the edge and forwards nothing itself
        app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_background_tasks)
    return app


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    st.pool = UpstreamPool(st.settings.upstream, connect_timeout=st.settings.connect_timeout,
                           read_timeout=st.settings.read_timeout)
    yield
    await st.pool.close()


async def _background_tasks(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    tasks = [
        asyncio.create_task(listen_for_revocations(st.store, st.cache, st.metrics), name="revocations"),
        asyncio.create_task(usage_flusher(st.store, st.usage, st.metrics, st.settings.flush_interval), name="usage"),
        asyncio.create_task(st.rules.watch(st.settings.reload_interval), name="rules"),
    ]
    yield
    for task in tasks:
        task.cancel()
    # Bounded: a task that swallowed its cancellation (a library turning it into a timeout
    # error, say) must not hold the shutdown, and the last-used flush below, hostage.
    _, pending = await asyncio.wait(tasks, timeout=3.0)
    for task in pending:
        log.error("background task %s did not stop when cancelled; cancelling it again", task.get_name())
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)
    # Nothing lost on shutdown: the buffered last-used data goes out within a deadline.
    try:
        await asyncio.wait_for(flush_usage(st.store, st.usage, st.metrics), SHUTDOWN_FLUSH_DEADLINE)
    except asyncio.TimeoutError:
        log.error("last-used flush did not finish within %ss; %d keys not written",
                  SHUTDOWN_FLUSH_DEADLINE, len(st.usage))
    await st.store.redis.aclose()


def make_ops_app(state: GatewayState) -> web.Application:
    """/healthz, /readyz and /metrics for one gateway process."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = {"rules_loaded": state.rules.current is not None, "redis": False}
        try:
            checks["redis"] = await asyncio.wait_for(state.store.ping(), state.settings.redis_timeout * 2)
        except (RedisError, OSError, asyncio.TimeoutError):
            pass
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def run_apps(apps: list[tuple[web.Application, str]], *, on_started: Callable[[], None] | None = None,
                   reuse_port: tuple[str, ...] = ()) -> None:
    """Serve each (app, HOST:PORT) until SIGINT/SIGTERM, then shut all down cleanly.

    Listeners named in ``reuse_port`` bind with SO_REUSEPORT (the workers of one gateway).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners = []
    try:
        for app, listen in apps:
            runner = EnvelopeAppRunner(app, access_log=None, handle_signals=False,
                                   logger=ServerLog(logging.getLogger("aiohttp.server")))
            await runner.setup()
            runners.append(runner)
            host, port = split_listen(listen)
            await web.TCPSite(runner, host, port, reuse_address=True, reuse_port=listen in reuse_port or None).start()
        if on_started:
            on_started()
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        accesslog.flush()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def install_sighup(holder: RulesHolder) -> None:
    """SIGHUP reloads scopes.yaml at once."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: holder.reload(force=True))
