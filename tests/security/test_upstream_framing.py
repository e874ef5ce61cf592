"""The upstream's framing is trusted for one response and no further (issue 12, item 6).

A scripted upstream answers each request with exact bytes. Bytes after the end of a response
that arrive with it: the client gets 502 upstream_unavailable and none of those bytes; bytes
that arrive after the response was passed on: the client keeps the response as framed, the
extra bytes are dropped. Either way that upstream connection is never reused, and the next
request on the same client connection gets a clean answer. A response head over the limits
(field size, field count, whole head) is a 502 too, with the gateway's memory kept bounded.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.security.conftest import parse_responses, start_gateway, stop_gateway
from tests.security.scripted_upstream import CLEAN, ScriptedUpstream

MARK = b"SMUGGLED"
SECOND = b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\nContent-Length: 8\r\n\r\n" + MARK
OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n"

# Extra bytes in the same write as the response: 502, nothing of it passed on.
SAME_READ = {
    "204-body": [b"HTTP/1.1 204 No Content\r\n\r\n" + MARK],
    "204-cl-body": [b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n" + MARK],
    "304-body": [b"HTTP/1.1 304 Not Modified\r\n\r\n" + MARK],
    "304-cl-body": [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\n" + MARK],
    "past-content-length": [OK5 + MARK],
    "past-last-chunk": [CHUNKED + MARK],
    "past-trailers": [CHUNKED[:-2] + b"X-T: 1\r\n\r\n" + MARK],
    "second-response": [OK5 + SECOND],
    "204-then-response": [b"HTTP/1.1 204 No Content\r\n\r\n" + SECOND],
    "chunked-then-response": [CHUNKED + SECOND],
    "cl-zero-then-response": [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + SECOND],
}
HEAD_SAME_READ = {
    "head-cl-body": [b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n" + MARK],
    "head-chunked-body": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n" + MARK + b"\r\n0\r\n\r\n"],
    "head-then-response": [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + SECOND],
}
# Extra bytes in a later write: the response as framed, then nothing.
LATER = {
    "later-past-content-length": ([OK5, MARK], b"first"),
    "later-past-last-chunk": ([CHUNKED, MARK], b"first"),
    "later-second-response": ([OK5, SECOND], b"first"),
    "later-204-body": ([b"HTTP/1.1 204 No Content\r\n\r\n", MARK], b""),
}
# Response heads over the limits (16 KiB a field, 128 fields, 64 KiB in all), or malformed.
BAD_HEADS = {
    "field-70k": [b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\nContent-Length: 0\r\n\r\n"],
    "name-20k": [b"HTTP/1.1 200 OK\r\nX-" + b"n" * 20000 + b": v\r\nContent-Length: 0\r\n\r\n"],
    "200-fields": [b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
                   + b"Content-Length: 0\r\n\r\n"],
    "head-100k-in-fields": [b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: " % i + b"b" * 10000 + b"\r\n" for i in range(10))
                            + b"Content-Length: 0\r\n\r\n"],
    "head-100k-in-pieces": [b"HTTP/1.1 200 OK\r\n"] + [b"X-H%d: " % i + b"c" * 10000 + b"\r\n" for i in range(10)]
    + [b"Content-Length: 0\r\n\r\n"],
    "reason-70k": [b"HTTP/1.1 200 " + b"r" * 70000 + b"\r\nContent-Length: 0\r\n\r\n"],
    "unterminated-8m": [b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * (8 << 20)],
    "bad-status": [b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"],
    "two-cl": [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nfirst!"],
    "cl-and-te": [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
    "bad-chunk": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
    "nul-in-header": [b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n"],
}


@pytest.fixture(scope="module")
def scripted():
    cases = {**SAME_READ, **HEAD_SAME_READ, **{k: v[0] for k, v in LATER.items()}, **BAD_HEADS}
    upstream = ScriptedUpstream(cases, pause=0.2).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gw(redis_server, scripted, tmp_path_factory):
    proc = start_gateway(tmp_path_factory.mktemp("gw-upstream"), redis_server.url, scripted, "--auth-failure-limit", "0")
    yield proc
    stop_gateway(proc)
    assert proc.proc.returncode == 0, proc.stderr.read_text()


def request(case: str, method: str = "GET") -> bytes:
    return f"{method} /v1/status?case={case} HTTP/1.1\r\nHost: api.example\r\n\r\n".encode()


def read_response(s: socket.socket, head_only: bool = False) -> bytes:
    """Exactly one response's bytes (Content-Length or chunked framing)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    [parsed] = parse_responses(head + b"\r\n\r\n")
    if head_only or parsed.status in (204, 304):
        return data
    if parsed.header("Content-Length") is not None:
        want = int(parsed.header("Content-Length"))
        while len(rest) < want:
            chunk = s.recv(65536)
            assert chunk
            rest += chunk
        return head + b"\r\n\r\n" + rest
    while not rest.endswith(b"0\r\n\r\n"):
        chunk = s.recv(65536)
        assert chunk
        rest += chunk
    return head + b"\r\n\r\n" + rest


def exchange_then_clean(gw, scripted, case: str, method: str = "GET") -> bytes:
    """``case`` then a clean request on the same client connection; returns the first answer's
    bytes, and checks the second is exactly the clean one on a new upstream connection."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(request(case, method))
        first = read_response(s, head_only=method == "HEAD")
        time.sleep(0.4 if case in LATER else 0.02)  # what the upstream sends later has arrived, to go nowhere
        s.sendall(request("clean"))
        second = read_response(s)
        s.settimeout(0.2)
        try:
            tail = s.recv(65536)
        except socket.timeout:
            tail = b""
    assert MARK not in first + second + tail
    assert tail == b""  # nothing after the clean answer either
    [clean] = parse_responses(second)
    assert (clean.status, clean.body, clean.header("X-Case")) == (200, b"clean", "clean"), second[:300]
    assert second.endswith(CLEAN.partition(b"\r\n\r\n")[2])
    [(conn_a, _), (conn_b, line_b)] = scripted.seen[-2:]
    assert line_b.startswith("GET /v1/status?case=clean ")
    assert conn_a != conn_b, "the upstream connection that misbehaved was reused"
    return first


def assert_502(raw: bytes) -> None:
    [resp] = parse_responses(raw)
    assert resp.status == 502 and resp.json()["error"]["code"] == "upstream_unavailable", raw[:300]


@pytest.mark.parametrize("case", list(SAME_READ))
def test_bytes_after_the_response_in_the_same_read_are_a_502(gw, scripted, case):
    assert_502(exchange_then_clean(gw, scripted, case))


@pytest.mark.parametrize("case", list(HEAD_SAME_READ))
def test_a_body_after_a_head_response_is_dropped_with_its_connection(gw, scripted, case):
    # A HEAD body is a common backend bug, not a reason to fail the request: the client gets the
    # head alone, none of the bytes after it (exchange_then_clean checks that and that the next
    # request runs on a new upstream connection).
    first = exchange_then_clean(gw, scripted, case, "HEAD")
    [resp] = parse_responses(first.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")
    assert resp.status == 200 and first.endswith(b"\r\n\r\n"), first[:300]


@pytest.mark.parametrize("case", list(LATER))
def test_bytes_after_the_response_arriving_later_are_dropped(gw, scripted, case):
    first = exchange_then_clean(gw, scripted, case)
    [resp] = parse_responses(first)
    assert resp.status in (200, 204) and resp.body == LATER[case][1], first[:300]
    assert resp.header("X-Smuggled") is None


@pytest.mark.parametrize("case", list(BAD_HEADS))
def test_a_bad_or_oversized_response_head_is_a_502(gw, scripted, case):
    assert_502(exchange_then_clean(gw, scripted, case))


def test_a_huge_response_head_keeps_memory_bounded_and_others_served(gw, scripted):
    before = gw.rss_kib()
    for _ in range(5):
        assert_502(exchange_then_clean(gw, scripted, "unterminated-8m"))
    assert gw.rss_kib() - before < 16 * 1024, (before, gw.rss_kib())
