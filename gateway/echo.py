"""A demo/test upstream that answers with exactly what it received: method, raw path, headers.

Query options (for demos and tests): ``download=N`` streams N bytes back; ``sleep=S`` waits
S seconds before answering; ``status=N`` answers with status N (200-599; a 3xx with ``Location: /``).
"""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web

CHUNK = b"\0" * 65536


async def echo(request: web.Request) -> web.StreamResponse:
    digest = hashlib.sha256()
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        digest.update(chunk)
    sleep = float(request.query.get("sleep", "0") or 0)
    if sleep:
        await asyncio.sleep(min(sleep, 120))
    download = int(request.query.get("download", "0") or 0)
    if download:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = download
        await response.prepare(request)
        left = download
        while left > 0:
            part = CHUNK[: min(left, len(CHUNK))]
            await response.write(part)
            left -= len(part)
        await response.write_eof()
        return response
    received = request.app.get(RECEIVED)
    record = {
        "method": request.method,
        "path": request.raw_path,
        "headers": [
            [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
        ],
        "body_bytes": size,
        "body_sha256": digest.hexdigest(),
    }
    if received is not None:
        received.append(record)
    status = int(request.query.get("status", "200") or 200)
    if not 200 <= status <= 599:
        status = 400
    headers = {"X-Upstream": "echo", **({"Location": "/"} if 300 <= status < 400 else {})}
    return web.json_response(record, status=status, headers=headers)


RECEIVED = web.AppKey("received", list)


def make_echo_app(*, keep: bool = False) -> web.Application:
    """The echo app; with ``keep`` every request record is also appended to app[RECEIVED]."""
    app = web.Application(client_max_size=1024**3)
    if keep:
        app[RECEIVED] = []
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:
    """`python -m gateway.echo --listen HOST:PORT`: the demo backend of deploy/docker-compose.yml."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gateway.echo", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT (default 127.0.0.1:8000)")
    host, _, port = parser.parse_args().listen.rpartition(":")
    web.run_app(make_echo_app(), host=host.strip("[]"), port=int(port), print=None)


if __name__ == "__main__":
    main()
