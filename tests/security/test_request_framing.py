"""Request framing and head size, checked at the upstream byte for byte (issue 12, items 4 and 5).

- Everything the head says about framing is checked before the request is queued: a
  Transfer-Encoding other than one `chunked`, a Content-Length that is not one decimal number,
  both together, Transfer-Encoding on HTTP/1.0. The head alone is sent, so the refusal cannot
  come from the body; the recorder must not see even the head.
- A bad chunk found in the same read as the head refuses the request before anything is sent;
  one found after the head went upstream aborts the upstream connection (the upstream sees a
  truncated body, never a complete request), and the client gets 400 malformed_request.
- The 64 KiB head limit holds however the head arrives: one write, many writes, split at any
  offset, or as the second request of a pipeline.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.security.conftest import GatewayProcess, RawResponse
from tests.security.test_http_parsing import assert_still_serving, complete_responses, converse, head


def post_head(gw: GatewayProcess, lines: list[bytes], version: bytes = b"HTTP/1.1") -> bytes:
    raw = head(b"POST", b"/v1/tasks", lines, gw.keys["writer"]["key"])
    return raw.replace(b"HTTP/1.1", version, 1)


def refused(responses: list[RawResponse], status: int = 400, code: str = "malformed_request") -> None:
    assert responses, "no answer"
    resp = responses[0]
    assert (resp.status, resp.json()["error"]["code"]) == (status, code), resp.raw[:300]
    assert resp.header("Connection") == "close"


def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# ---- item 4: framing headers, refused at head time --------------------------------------------------

HEAD_FRAMING = {
    "te-chunked-gzip": [b"Transfer-Encoding: chunked, gzip"],
    "te-gzip": [b"Transfer-Encoding: gzip"],
    "te-gzip-chunked": [b"Transfer-Encoding: gzip, chunked"],
    "te-identity": [b"Transfer-Encoding: identity"],
    "te-identity-chunked": [b"Transfer-Encoding: identity, chunked"],
    "te-chunked-chunked": [b"Transfer-Encoding: chunked, chunked"],
    "te-chunked-comma": [b"Transfer-Encoding: chunked,"],
    "te-comma-chunked": [b"Transfer-Encoding: ,chunked"],
    "te-param": [b"Transfer-Encoding: chunked;x=1"],
    "te-param-space": [b"Transfer-Encoding: chunked ;x=1"],
    "te-quoted": [b"Transfer-Encoding: \"chunked\""],
    "te-xchunked": [b"Transfer-Encoding: xchunked"],
    "te-chunkedx": [b"Transfer-Encoding: chunkedx"],
    "te-empty": [b"Transfer-Encoding: "],
    "te-vtab": [b"Transfer-Encoding: \x0bchunked"],
    "te-folded": [b"Transfer-Encoding:", b" chunked"],
    "te-leading-space-name": [b" Transfer-Encoding: chunked"],
    "te-twice-same": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    "te-twice-other": [b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"],
    "te-twice-case": [b"Transfer-Encoding: chunked", b"transfer-encoding: chunked"],
    "te-then-cl": [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
    "cl-then-te": [b"Content-Length: 5", b"Transfer-Encoding: chunked"],
    "te-cl-zero": [b"Transfer-Encoding: chunked", b"Content-Length: 0"],
    "cl-twice-same": [b"Content-Length: 5", b"Content-Length: 5"],
    "cl-twice-other": [b"Content-Length: 5", b"Content-Length: 6"],
    "cl-list": [b"Content-Length: 5, 5"],
    "cl-plus": [b"Content-Length: +5"],
    "cl-minus": [b"Content-Length: -5"],
    "cl-hex": [b"Content-Length: 0x5"],
    "cl-decimal-point": [b"Content-Length: 5.0"],
    "cl-empty": [b"Content-Length: "],
    "cl-inner-space": [b"Content-Length: 5 5"],
    "cl-non-ascii-digit": ["Content-Length: \u0665".encode()],
    "cl-overflow": [b"Content-Length: 184467440737095516160"],
}


@pytest.mark.parametrize("lines", [pytest.param(v, id=k) for k, v in HEAD_FRAMING.items()])
def test_unsupported_framing_is_refused_before_anything_is_forwarded(gateway, lines):
    heads = len(gateway.recorder.heads)
    responses, _ = converse(gateway, post_head(gateway, lines))  # the head alone: no body sent
    refused(responses)
    assert gateway.recorder.heads[heads:] == []  # not even the head reached the upstream


@pytest.mark.parametrize("lines", [
    pytest.param([b"Transfer-Encoding: chunked"], id="te"),
    pytest.param([b"Transfer-Encoding: chunked", b"Content-Length: 5"], id="te-and-cl"),
    pytest.param([b"Connection: keep-alive", b"Transfer-Encoding: chunked"], id="te-keep-alive"),
])
def test_transfer_encoding_on_http_1_0_is_refused(gateway, lines):
    heads = len(gateway.recorder.heads)
    responses, _ = converse(gateway, post_head(gateway, lines, b"HTTP/1.0") + b"5\r\nabcde\r\n0\r\n\r\n")
    refused(responses)
    assert gateway.recorder.heads[heads:] == []


@pytest.mark.parametrize("lines", [
    pytest.param([b"Transfer-Encoding: chunked"], id="lower"),
    pytest.param([b"Transfer-Encoding: CHUNKED"], id="upper"),
    pytest.param([b"Transfer-Encoding:  chunked  "], id="ows"),
    pytest.param([b"transfer-encoding: chunked"], id="name-case"),
])
def test_plain_chunked_is_forwarded(gateway, lines):
    before = len(gateway.recorder.received)
    responses, _ = converse(gateway, post_head(gateway, lines) + b"5\r\nabcde\r\n0\r\n\r\n")
    assert responses and responses[0].status == 200, responses[0].raw[:300] if responses else None
    [got] = gateway.recorder.received[before:]
    assert got.body == b"abcde" and got.values("Transfer-Encoding") == ["chunked"]


BAD_CHUNKS = {
    "hex-prefix": b"0x10\r\n",
    "negative": b"-1\r\n",
    "space-before-ext": b"1 ;\r\n",
    "trailing-space": b"5 \r\n",
    "plus": b"+5\r\n",
    "over-long-hex": b"1" * 40 + b"\r\n",
    "overflow": b"f" * 17 + b"\r\n",
    "ext-nul": b"5;a\x00\r\n",
    "ext-quote-name": b"5;\"x\r\n",
    "ext-space-in-value": b"5;a=b c\r\n",
    "ext-space-before-name": b"5; a\r\n",
    "ext-comma": b"5;a,b\r\n",
    "ext-control-in-quoted": b"5;a=\"\x01\"\r\n",
    "tab-before-ext": b"5\t;a\r\n",
    "not-hex": b"zz\r\n",
}
TRAILERS = {
    "trailer-cl": b"0\r\nContent-Length: 5\r\n\r\n",
    "trailer-cl-lower": b"0\r\ncontent-length: 0\r\n\r\n",
    "trailer-te": b"0\r\nTransfer-Encoding: chunked\r\n\r\n",
    "trailer-host": b"0\r\nHost: evil.example\r\n\r\n",
    "trailer-trailer": b"0\r\nTrailer: X-Org-Id\r\n\r\n",
}


@pytest.mark.parametrize("rest", [pytest.param(b"5\r\nabcde\r\n" + v, id=k) for k, v in {**BAD_CHUNKS, **TRAILERS}.items()]
                         + [pytest.param(v, id="first-" + k) for k, v in BAD_CHUNKS.items()])
def test_a_bad_chunk_in_the_same_read_forwards_nothing(gateway, rest):
    heads = len(gateway.recorder.heads)
    responses, _ = converse(gateway, post_head(gateway, [b"Transfer-Encoding: chunked"]) + rest)
    refused(responses)
    assert gateway.recorder.heads[heads:] == []


@pytest.mark.parametrize("bad", [pytest.param(v, id=k) for k, v in {**BAD_CHUNKS, **TRAILERS}.items()])
def test_a_bad_chunk_after_the_head_went_upstream_aborts_the_upstream_request(gateway, bad):
    """The head and a first chunk are forwarded; the bad chunk then cuts the upstream request
    short (its body never ends) and the client gets 400 malformed_request."""
    rec = gateway.recorder
    heads, received = len(rec.heads), len(rec.received)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as s:
        s.sendall(post_head(gateway, [b"Transfer-Encoding: chunked"]) + b"3\r\nabc\r\n")
        wait_for(lambda: len(rec.heads) > heads)
        [forwarded] = rec.heads[heads:]
        s.sendall(bad if bad.startswith(b"0\r\n") else b"2\r\nde\r\n" + bad)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    responses, _ = complete_responses(data)
    refused(responses)
    wait_for(lambda: forwarded in rec.cut_short)  # the upstream saw its connection end mid-body
    assert rec.received[received:] == []  # never a complete request
    assert_still_serving(gateway)


def test_a_benign_trailer_is_dropped_not_forwarded(gateway):
    before = len(gateway.recorder.received)
    body = b"5\r\nabcde\r\n0\r\nX-Org-Id: evil\r\nX-Checksum: 1\r\n\r\n"
    responses, _ = converse(gateway, post_head(gateway, [b"Transfer-Encoding: chunked"]) + body)
    assert responses[0].status == 200
    [got] = gateway.recorder.received[before:]
    assert got.body == b"abcde" and "evil" not in repr(got.headers) and got.values("X-Checksum") == []


# ---- item 5: the head size limit, however the head arrives -----------------------------------------

def reader_get(gw: GatewayProcess, lines: list[bytes], target: bytes = b"/v1/tasks") -> bytes:
    return head(b"GET", target, lines, gw.keys["reader"]["key"])


def big_heads(gw: GatewayProcess) -> dict[str, bytes]:
    return {
        "7-fields-of-15k": reader_get(gw, [b"X-Big%d: " % i + b"a" * 15000 for i in range(7)]),
        "100-fields-of-700": reader_get(gw, [b"X-H%03d: " % i + b"b" * 700 for i in range(100)]),
        "long-target-and-fields": reader_get(gw, [b"X-Big%d: " % i + b"c" * 15000 for i in range(4)],
                                             b"/v1/tasks/" + b"t" * 8000),
        "127-fields-of-520": reader_get(gw, [b"X-H%03d: " % i + b"d" * 520 for i in range(127)]),
        "long-names": reader_get(gw, [b"X-" + b"n" * 15000 + b"%d: v" % i for i in range(5)]),
    }


def send_in_pieces(gw: GatewayProcess, pieces: list[bytes], timeout: float = 5.0) -> tuple[list[RawResponse], bool]:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for piece in pieces:
                s.sendall(piece)
                time.sleep(0.005)  # separate reads at the gateway
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the rest was sent
        data, closed = b"", False
        try:
            while chunk := s.recv(65536):
                data += chunk
            closed = True
        except (socket.timeout, ConnectionResetError):
            pass
    return complete_responses(data)[0], closed


@pytest.mark.parametrize("name", ["7-fields-of-15k", "100-fields-of-700", "long-target-and-fields", "127-fields-of-520",
                                  "long-names"])
def test_a_big_head_in_one_write_is_refused(gateway, name):
    raw = big_heads(gateway)[name]
    assert len(raw) > 65536
    heads = len(gateway.recorder.heads)
    responses, _ = converse(gateway, raw)
    refused(responses, 431, "headers_too_large")
    assert gateway.recorder.heads[heads:] == []
    assert gateway.keys["reader"]["key"].encode() not in responses[0].raw


SPLITS = [1, 100, 8000, 16384, 32768, 60000, 65535, 65536, 65537, -100, -4, -1]


@pytest.mark.parametrize("at", SPLITS)
def test_a_big_head_split_in_two_reads_is_refused(gateway, at):
    raw = big_heads(gateway)["7-fields-of-15k"]
    heads = len(gateway.recorder.heads)
    responses, _ = send_in_pieces(gateway, [raw[:at], raw[at:]])
    refused(responses, 431, "headers_too_large")
    assert gateway.recorder.heads[heads:] == []


def test_a_big_head_in_many_small_writes_is_refused(gateway):
    raw = big_heads(gateway)["100-fields-of-700"]
    heads = len(gateway.recorder.heads)
    responses, _ = send_in_pieces(gateway, [raw[i:i + 1500] for i in range(0, len(raw), 1500)])
    refused(responses, 431, "headers_too_large")
    assert gateway.recorder.heads[heads:] == []


def test_a_head_just_under_the_limit_is_forwarded(gateway):
    raw = reader_get(gateway, [b"X-Big%d: " % i + b"a" * 15000 for i in range(4)])
    before = len(gateway.recorder.received)
    responses, _ = converse(gateway, raw)
    assert responses and responses[0].status == 200, responses[0].raw[:300] if responses else None
    [got] = gateway.recorder.received[before:]
    assert got.values("X-Big3") == ["a" * 15000]


@pytest.mark.parametrize("separate", [False, True], ids=["one-write", "two-writes"])
def test_a_pipelined_second_head_over_the_limit_is_refused(gateway, separate):
    key = gateway.keys["reader"]["key"].encode()
    first = b"GET /v1/tasks/first HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + key + b"\r\n\r\n"
    second = big_heads(gateway)["7-fields-of-15k"].replace(b"GET /v1/tasks ", b"GET /v1/tasks/second ")
    before, heads = len(gateway.recorder.received), len(gateway.recorder.heads)
    pieces = [first, second] if separate else [first + second]
    responses, closed = send_in_pieces(gateway, pieces)
    assert [r.status for r in responses] == [200, 431], [r.raw[:200] for r in responses]
    assert responses[0].json()["request_line"] == "GET /v1/tasks/first HTTP/1.1"
    refused(responses[1:], 431, "headers_too_large")
    assert [h.request_line for h in gateway.recorder.heads[heads:]] == ["GET /v1/tasks/first HTTP/1.1"]
    assert len(gateway.recorder.received[before:]) == 1 and closed
