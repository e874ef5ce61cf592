"""gateway/framing.py: the request framing and Host rules, without sockets."""

import pytest

from gateway.framing import ProtocolError, request_framing, valid_host


@pytest.mark.parametrize("headers, http11, expected", [
    ([("Host", "a")], True, (None, False, False)),
    ([("Host", "a"), ("Content-Length", "005 ")], True, (5, False, False)),
    ([("host", "a"), ("transfer-encoding", "Chunked"), ("Expect", "100-continue")], True, (None, True, True)),
    ([], False, (None, False, False)),  # HTTP/1.0: Host optional
])
def test_accepted(headers, http11, expected):
    assert request_framing(headers, http11) == expected


@pytest.mark.parametrize("headers, http11, code", [
    ([], True, "invalid_host"),
    ([("Host", "a"), ("HOST", "a")], False, "invalid_host"),
    ([("Host", "a b")], True, "invalid_host"),
    ([("Host", "a"), ("Transfer-Encoding", "gzip, chunked")], True, None),
    ([("Host", "a"), ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], True, None),
    ([("Host", "a"), ("Transfer-Encoding", "chunked"), ("Content-Length", "0")], True, None),
    ([("Transfer-Encoding", "chunked")], False, None),
    ([("Host", "a"), ("Content-Length", "1"), ("Content-Length", "1")], True, None),
    ([("Host", "a"), ("Content-Length", "\u0661")], True, None),
    ([("Host", "a"), ("Content-Length", "9" * 30)], True, None),
])
def test_refused(headers, http11, code):
    with pytest.raises(ProtocolError) as caught:
        request_framing(headers, http11)
    assert (caught.value.status, caught.value.code) == (400, code)


@pytest.mark.parametrize("value, ok", [
    ("api.example", True), ("a:1", True), ("[::1]:8080", True), ("127.0.0.1", True),
    ("", False), ("a@b", False), ("a/b", False), ("a,b", False), ("a:", False), ("a:x", False),
    ("[::1", False), ("a" * 262, False),
])
def test_valid_host(value, ok):
    assert valid_host(value) is ok
