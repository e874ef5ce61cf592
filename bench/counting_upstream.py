"""A counting upstream for bench/ratelimit.py: answers every request 200 and records when it arrived.

    python bench/counting_upstream.py --listen 127.0.0.1:PORT

The limiter's accuracy is judged by the window a request REACHED THE UPSTREAM in (not the
client's answer time): ``GET /_arrivals`` answers the arrival times (``time.time()``, one per
line) of every other request since the last ``/_arrivals``, and forgets them. Keep-alive,
no request bodies (the benchmark sends GETs); uvloop when installed, as the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import time

BODY = b'{"ok":true}'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class Upstream(asyncio.Protocol):
    arrivals: list[float] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            if head.startswith(b"GET /_arrivals"):
                text = "\n".join(f"{t:.6f}" for t in Upstream.arrivals).encode()
                Upstream.arrivals = []
                out.append(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(text), text))
            else:
                Upstream.arrivals.append(now)
                out.append(OK)
        if out:
            self.transport.write(b"".join(out))


async def serve(listen: str) -> None:
    host, port = listen.rsplit(":", 1)
    server = await asyncio.get_running_loop().create_server(Upstream, host, int(port), backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.listen))


if __name__ == "__main__":
    main()
