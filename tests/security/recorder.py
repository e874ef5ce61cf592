"""An upstream that records the exact bytes of every request it receives (request line, header
lines, body) and answers 200 with a small JSON body. It runs its own event loop in a thread so
sync and async tests can use it alike; it parses HTTP/1.1 by hand so nothing is normalised."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field


@dataclass
class Received:
    request_line: str  # e.g. "GET /v1/tasks?x=1 HTTP/1.1", exactly as sent
    headers: list[tuple[str, str]]  # in order, repeated names kept, raw case
    body: bytes

    @property
    def method(self) -> str:
        return self.request_line.split(" ")[0]

    @property
    def target(self) -> str:
        return self.request_line.split(" ")[1]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.values(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


class ThreadedServer:
    """A TCP server on 127.0.0.1 with an event loop of its own in a thread, so sync and async
    tests can use it alike. Subclasses are dataclasses with ``port``, ``_loop``, ``_server`` and
    ``_thread`` fields and define ``_serve(reader, writer)``."""

    NAME = "server"
    port: int
    _loop: asyncio.AbstractEventLoop | None
    _server: asyncio.AbstractServer | None
    _thread: threading.Thread | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()

            async def main() -> None:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()
                async with self._server:
                    try:
                        await self._server.serve_forever()
                    except asyncio.CancelledError:
                        pass

            self._loop.run_until_complete(main())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name=self.NAME)
        self._thread.start()
        assert ready.wait(5), f"{self.NAME} did not start"
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            self._loop.call_soon_threadsafe(self._server.close)
            for task in asyncio.all_tasks(self._loop):
                self._loop.call_soon_threadsafe(task.cancel)
        if self._thread:
            self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass
class Recorder(ThreadedServer):
    NAME = "recorder"
    port: int = 0
    received: list[Received] = field(default_factory=list)  # complete requests
    heads: list[Received] = field(default_factory=list)  # every request head, body or not (body b"")
    cut_short: list[Received] = field(default_factory=list)  # heads whose body never completed
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.AbstractServer | None = None
    _thread: threading.Thread | None = None

    _by_id: dict[str, Received] = field(default_factory=dict)  # X-Request-Id -> the first request with it
    _indexed: int = 0  # how many of ``received`` are in _by_id

    def by_request_id(self, request_id: str) -> Received | None:
        """The first request received with this X-Request-Id. The recorder lives for the whole
        session (thousands of requests): each one is indexed once instead of every lookup
        scanning them all; every one is still checked to carry at most one X-Request-Id."""
        while self._indexed < len(self.received):
            r = self.received[self._indexed]
            rid = r.header("X-Request-Id")  # asserts it was sent at most once
            if rid is not None:
                self._by_id.setdefault(rid, r)
            self._indexed += 1
        return self._by_id.get(request_id)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                headers = [tuple(part.strip() if i else part for i, part in enumerate(line.split(":", 1)))
                           for line in lines[1:]]
                self.heads.append(Received(lines[0], [(k, v) for k, v in headers], b""))
                try:
                    body = await self._read_body(reader, headers)
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    self.cut_short.append(self.heads[-1])  # an incomplete request: never answered
                    return
                got = Received(lines[0], [(k, v) for k, v in headers], body)
                self.received.append(got)
                payload = json.dumps({"request_line": got.request_line, "headers": got.headers,
                                      "body_bytes": len(body)}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(payload)).encode() + b"\r\nX-Upstream: recorder\r\n\r\n" + payload)
                await writer.drain()
        finally:
            writer.close()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
        names = {k.lower(): v for k, v in headers}
        if "chunked" in names.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return body
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        length = int(names.get("content-length", "0") or 0)
        return await reader.readexactly(length) if length else b""
