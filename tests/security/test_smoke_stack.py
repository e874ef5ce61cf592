"""The security stack itself: both parsers really run, and the recorder sees exact bytes."""

from __future__ import annotations

from tests.security.conftest import check_forwarded_as_authorized


def test_parser_in_use_and_exact_forwarding(gateway):
    key = gateway.keys["reader"]["key"]
    resp = gateway.request("GET", "/v1/tasks/a%20b?x=%41&y=1", key=key)
    assert resp.status == 200, resp.raw
    got = check_forwarded_as_authorized(gateway, resp)
    assert got.request_line == "GET /v1/tasks/a%20b?x=%41&y=1 HTTP/1.1"
    assert got.header("X-Org-Id") == "sec-org"
    err = gateway.stderr.read_text()
    assert ("pure-Python" in err) == (gateway.parser == "py"), err
