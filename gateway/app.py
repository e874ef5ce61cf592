"""Builds the gateway (its proxy or forward-auth listener, and the aiohttp ops listener) and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import signal
import time
from typing import Awaitable, Callable

from aiohttp import web

from gateway import forward_auth
from gateway import accesslog
from gateway import store as store_mod
from gateway.cache import VerdictCache
from gateway.config import ServeSettings
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.httplimits import Limits
from gateway.httpserver import HttpServer
from gateway.decision import GatewayState
from gateway.envelope import answer_protocol_error
from gateway.limiter import Limiter
from gateway.plans import LimitsConfig, settings_limits
from gateway.proxy import handle
from gateway.reload import RulesHolder
from gateway.scopes import RuleSet
from gateway.aiohttp_runner import DEFAULT_LIMITS, EnvelopeAppRunner, ListenerLimits, ops_envelope_middleware, server_logger
from gateway.signing import make_signer
from gateway.tasks import flush_at_shutdown, listen_for_revocations, usage_flusher
from gateway.throttle import FailureThrottle, KnownKeys
from gateway.upstream import UpstreamPool

log = logging.getLogger("gateway")

SHUTDOWN_REQUEST_GRACE = 10.0  # seconds in-flight requests get to finish on SIGTERM
# The background client's pool: the subscription holds one connection; the listener's
# acknowledgements and registry beat, and the flusher, need one each at most at a time; the
# limiter's returns at most store.limits.RETURN_CONCURRENCY (a cluster) or one pipeline.
BACKGROUND_CONNECTIONS = 8


def make_state(settings: ServeSettings, *, clock: Callable[[], float] = time.time,
               rules: RuleSet | None = None, limits: LimitsConfig | None = None) -> GatewayState:
    """Everything one gateway process shares between requests; ``clock``, ``rules`` and the
    limits configuration (else read from ``settings``: plans.settings_limits) are injectable."""
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
        store=store_mod.KeyStore(store_mod.connect(settings.redis, timeout=settings.redis_timeout,
                                                   max_connections=settings.redis_max_connections),
                                 settings.redis_prefix,
                                 # quota leases are confirmed like other counted writes
                                 store_mod.parse_min_replicas(settings.redis_min_replicas)),
        # The subscription, its acknowledgements, the registry beat and the last-used flushes on
        # connections of their own: a burst of request reads that fills the pool above cannot
        # fail them (a failed beat or ack would drop the cache's trust and make the burst worse).
        background=store_mod.KeyStore(store_mod.connect(settings.redis, timeout=settings.redis_timeout,
                                                        max_connections=BACKGROUND_CONNECTIONS),
                                      settings.redis_prefix,
                                      store_mod.parse_min_replicas(settings.redis_min_replicas)),
        cache=cache,
        metrics=metrics,
        clock=clock,
        throttle=FailureThrottle.for_settings(settings, clock),
        known_keys=KnownKeys(settings.cache_size),
        trusted_nets=tuple(ipaddress.ip_network(c, strict=False) for c in settings.trusted_proxies),
        signer=make_signer(settings.signing_secrets, settings.upstream),
    )
    metrics.add_throttle(state.throttle)
    state.limits = Limiter(state.store.limits, settings_limits(settings) if limits is None else limits, clock,
                           returns=state.background.limits)
    metrics.add_limiter(state.limits)
    state.background.ledger.retain(settings.usage_hourly_days, settings.usage_daily_days)
    return state


class Gateway:
    """One gateway process's listener (proxy or forward-auth), its state and background tasks."""

    def __init__(self, settings: ServeSettings, *, clock: Callable[[], float] = time.time,
                 rules: RuleSet | None = None, limits: LimitsConfig | None = None) -> None:
        self.state = st = make_state(settings, clock=clock, rules=rules, limits=limits)
        handler = handle if settings.mode == "proxy" else forward_auth.check
        self.server = HttpServer(functools.partial(handler, st), answer_protocol_error,
                                 Limits(head_timeout=settings.head_timeout))
        self._tasks: list[asyncio.Task] = []
        self.port = 0

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on host:port (0: any free port), then start the background tasks; returns the port."""
        port = await self.listen(host, port, reuse_port=reuse_port)
        self.start_tasks()
        return port

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Bind and serve; requests are answered, Redis is not touched yet (see start_tasks)."""
        st = self.state
        if st.settings.mode == "proxy":  # forward-auth answers the edge and forwards nothing itself
            st.pool = UpstreamPool(st.settings.upstream, connect_timeout=st.settings.connect_timeout,
                                   read_timeout=st.settings.read_timeout)
        self.port = await self.server.start(host, port, reuse_port=reuse_port)
        return self.port

    def start_tasks(self) -> None:
        """The revocation listener (until it runs, the cache is not trusted; it also hears the
        limiter's reclaims), the last-used flusher, the rules watcher and the limiter's returns;
        the first two on the background Redis client."""
        st = self.state
        self._tasks = [
            asyncio.create_task(listen_for_revocations(st.background, st.cache, st.metrics, st.usage.node_id,
                                                      reads=st.store, on_reclaim=st.limits.on_reclaim),
                                name="revocations"),
            asyncio.create_task(st.limits.run(), name="limits"),
            asyncio.create_task(usage_flusher(st.background, st.usage, st.metrics, st.settings.flush_interval),
                                name="usage"),
            asyncio.create_task(st.rules.watch(st.settings.reload_interval), name="rules"),
        ]

    async def stop(self) -> None:
        """Finish in-flight requests, stop the tasks, flush last-used data, close connections."""
        st = self.state
        await self.server.stop(grace=SHUTDOWN_REQUEST_GRACE)
        for task in self._tasks:
            task.cancel()
        # Bounded: a task that swallowed its cancellation (a library turning it into a timeout
        # error, say) must not hold the shutdown, and the last-used flush below, hostage.
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=3.0)
            for task in pending:
                log.error("background task %s did not stop when cancelled; cancelling it again", task.get_name())
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self._tasks = []
        await st.limits.close()  # the budget this process holds goes back (other nodes can spend it)
        await flush_at_shutdown(st.background, st.usage, st.metrics)
        await st.store.redis.aclose()
        await st.background.redis.aclose()
        if st.pool is not None:
            await st.pool.close()


def make_ops_app(state: GatewayState, *, checks: Callable[[], Awaitable[dict[str, bool]]] | None = None,
                 before_metrics: Callable[[], Awaitable[None]] | None = None) -> web.Application:
    """/healthz, /readyz and /metrics for one gateway process, or for the admin API (its
    AdminState has the same settings.redis_timeout, rules, store and metrics.render()).
    ``checks``: more named readiness checks (the admin API's OpenID provider); ``before_metrics``:
    runs before /metrics renders (the admin API's live-sessions gauge)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    extra = checks

    async def readyz(_: web.Request) -> web.Response:
        checks = {"rules_loaded": state.rules.current is not None, "redis": False}
        try:
            checks["redis"] = await asyncio.wait_for(state.store.ping(), state.settings.redis_timeout * 2)
        except (*store_mod.FAULTS, asyncio.TimeoutError):
            pass
        if extra is not None:
            checks.update(await extra())
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        if before_metrics is not None:
            await before_metrics()
        return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application(middlewares=[ops_envelope_middleware])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


Service = web.Application | Gateway


async def run_apps(apps: list[tuple[Service, str]], *, on_started: Callable[[], None] | None = None,
                   reuse_port: tuple[str, ...] = (), limits: ListenerLimits = DEFAULT_LIMITS) -> None:
    """Serve each (app or gateway, HOST:PORT) until SIGINT/SIGTERM, then shut all down cleanly.

    Listeners named in ``reuse_port`` bind with SO_REUSEPORT (the workers of one gateway). Every
    aiohttp app (admin API, ops listeners) gets ``limits`` (gateway/aiohttp_runner.py).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started: list[Callable[[], Awaitable[None]]] = []
    try:
        for app, listen in apps:
            host, port = split_listen(listen)
            if isinstance(app, Gateway):
                started.append(app.stop)
                await app.listen(host, port, reuse_port=listen in reuse_port)
                continue
            runner = EnvelopeAppRunner(app, limits=limits, access_log=None, handle_signals=False,
                                       logger=server_logger("aiohttp.server"))
            await runner.setup()
            started.append(runner.cleanup)
            await web.TCPSite(runner, host, port, reuse_address=True, reuse_port=listen in reuse_port or None).start()
        # Only now the gateways' own Redis connections: made earlier, one could take the
        # ephemeral port a listener above was about to bind.
        for app, _ in apps:
            if isinstance(app, Gateway):
                app.start_tasks()
        if on_started:
            on_started()
        await stop.wait()
    finally:
        for cleanup in reversed(started):
            await cleanup()
        accesslog.flush()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def install_sighup(holder: RulesHolder) -> None:
    """SIGHUP reloads scopes.yaml at once."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: holder.reload(force=True))
