"""Send exact bytes over a socket and parse the HTTP/1.1 response (for targets clients normalise)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)


def parse_responses(data: bytes) -> list[RawResponse]:
    """Split a byte stream into HTTP/1.1 responses (Content-Length or chunked bodies)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        _, status, *reason = lines[0].split(" ", 2)
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        names = {k.lower(): v for k, v in headers}
        if "content-length" in names:
            n = int(names["content-length"])
            body, rest = rest[:n], rest[n:]
        elif "chunked" in names.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                if size == 0:
                    rest = rest.partition(b"\r\n")[2]
                    break
                body, rest = body + rest[:size], rest[size + 2:]
        else:
            body, rest = rest, b""
        out.append(RawResponse(int(status), reason[0] if reason else "", headers, body, data[: len(data) - len(rest)]))
        data = rest
    return out


async def raw_request(base_url: str, request: bytes, timeout: float = 10.0) -> RawResponse:
    """Write ``request`` as-is (it must ask for Connection: close) and read the answer."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    responses = parse_responses(data)
    assert responses, f"no HTTP response to {request[:200]!r}: got {data[:200]!r}"
    return responses[0]


def get(target: str, headers: dict[str, str] | list[tuple[str, str]] = (), method: str = "GET",
        connection: str = "close") -> bytes:
    """Build a request with an exact target and exact header lines."""
    items = headers.items() if isinstance(headers, dict) else headers
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Connection: {connection}"]
    lines += [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
