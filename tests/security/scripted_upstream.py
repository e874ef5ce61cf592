"""An upstream that answers each request with exact bytes chosen by the test: the response for
``?case=NAME`` is ``cases[NAME]``, a list of pieces written with a pause between them (so a
piece can arrive in a later read). It records which connection each request came on, so a
test can tell whether the gateway reused a connection. Its own event loop runs in a thread."""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass, field

from tests.security.recorder import ThreadedServer

CLEAN = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Case: clean\r\n\r\nclean"


@dataclass
class ScriptedUpstream(ThreadedServer):
    NAME = "scripted-upstream"
    cases: dict[str, list[bytes]]
    pause: float = 0.2
    port: int = 0
    seen: list[tuple[int, str]] = field(default_factory=list)  # (connection number, request line)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.AbstractServer | None = None
    _thread: threading.Thread | None = None
    _ids: itertools.count = field(default_factory=itertools.count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self._ids)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                self.seen.append((conn, line))
                case = line.split(" ")[1].partition("case=")[2].split("&")[0]
                for i, piece in enumerate(self.cases.get(case, [CLEAN])):
                    if i:
                        await asyncio.sleep(self.pause)
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
