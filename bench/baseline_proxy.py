"""Config 3: the pass-through proxy a Python team would write with aiohttp, as a yardstick.

One pooled ClientSession; hop-by-hop headers dropped; request and response bodies streamed, as
the gateway does; uvloop when installed, as the gateway does. With ``--redis`` it also awaits one HGETALL per request (the price of a key
lookup on every request, without any of the gateway's other work).

    python bench/baseline_proxy.py --listen 127.0.0.1:8000 --upstream http://127.0.0.1:9000 \
        [--redis redis://127.0.0.1:6379/0 --redis-key 'gw:key:{key_...}']
"""

from __future__ import annotations

import argparse
import time
import asyncio
import signal

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "host",
})
SESSION = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str, redis_url: str | None, redis_key: str, naive_limit: str = "") -> web.Application:
    upstream = upstream.rstrip("/")
    client = aioredis.Redis.from_url(redis_url) if redis_url else None
    window_s, limit = 0, 0
    if naive_limit:  # "SECONDS=LIMIT": one INCR per request, Kong's accurate (Redis) mode (bench/ratelimit.py)
        window_s, limit = (int(x) for x in naive_limit.split("="))

    async def handle(request: web.Request) -> web.StreamResponse:
        if limit:
            window = int(time.time()) // window_s
            name = f"naive:{request.headers.get('Authorization', '')[-12:]}:{window}"
            count = await client.incr(name)
            if count == 1:
                await client.expire(name, window_s + 60)
            if count > limit:
                return web.json_response({"error": {"code": "rate_limited"}}, status=429)
        elif client is not None:
            await client.hgetall(redis_key)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        async with request.app[SESSION].request(
            request.method, upstream + request.raw_path, headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False, auto_decompress=False,
        ) as up:
            response = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    response.headers.add(k, v)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session(app: web.Application):
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        yield
        await app[SESSION].close()
        if client is not None:
            await client.aclose()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    app.cleanup_ctx.append(session)
    return app


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    runner = web.AppRunner(make_app(args.upstream, args.redis, args.redis_key, args.naive_limit), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, int(port), reuse_address=True).start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def use_uvloop() -> str:
    """The gateway runs on uvloop when it is installed (gateway.cli); so does the baseline, to compare like with like."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8000")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--redis", default=None, help="Redis URL: await one HGETALL per request")
    parser.add_argument("--redis-key", default="bench:record", help="the hash read by that HGETALL")
    parser.add_argument("--naive-limit", default="", metavar="SECONDS=LIMIT",
                        help="with --redis: a per-key fixed-window limit, one INCR per request (instead of the HGETALL)")
    args = parser.parse_args()
    print(f"baseline proxy on {args.listen} -> {args.upstream} (event loop: {use_uvloop()})", flush=True)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
