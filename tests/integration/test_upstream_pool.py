"""The upstream pool keeps the connections a burst needed for the next burst (issue 12, item 0).

A real HTTP/1.1 upstream on a socket holds every request until the whole burst has arrived
(so they are all in flight at once), then answers them all. Two bursts of more exchanges than
the old idle cap (512): the second reuses the first one's connections instead of closing
some of them and connecting again.
"""

from __future__ import annotations

import asyncio

from gateway.upstream import MAX_IDLE, UpstreamPool

BURST = 600  # in flight at once: more than the old cap of 512 idle connections
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class BarrierUpstream:
    """Answers once ``burst`` requests are waiting; counts the connections it accepted."""

    def __init__(self, burst: int) -> None:
        self.burst = burst
        self.accepted = 0
        self.waiting: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.waiting.append(writer)
                if len(self.waiting) >= self.burst:
                    waiting, self.waiting = self.waiting, []
                    for w in waiting:
                        w.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_burst_larger_than_the_old_idle_cap_reuses_every_connection_next_time():
    assert MAX_IDLE >= BURST
    upstream = BarrierUpstream(BURST)
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0, backlog=BURST)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(f"http://127.0.0.1:{port}", connect_timeout=5.0, read_timeout=10.0)

    async def one() -> bytes:
        response = await pool.request("GET", "/", [])
        body = response.complete_body
        if body is None:
            body = b"".join([chunk async for chunk in response.iter_chunks()])
        assert response.status == 200
        return body

    try:
        for _ in range(2):
            assert await asyncio.wait_for(asyncio.gather(*(one() for _ in range(BURST))), 30) == [b"ok"] * BURST
        # Every exchange of the second burst went out on a connection of the first.
        assert upstream.accepted == BURST, f"{upstream.accepted - BURST} connections opened again"
        assert len(pool._idle) == BURST
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
