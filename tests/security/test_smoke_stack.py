"""The security stack itself: the gateway process runs, and the recorder sees exact bytes."""

from __future__ import annotations

from tests.security.conftest import check_forwarded_as_authorized


def test_exact_forwarding(gateway):
    key = gateway.keys["reader"]["key"]
    resp = gateway.request("GET", "/v1/tasks/a%20b?x=%41&y=1", key=key)
    assert resp.status == 200, resp.raw
    got = check_forwarded_as_authorized(gateway, resp)
    assert got.request_line == "GET /v1/tasks/a%20b?x=%41&y=1 HTTP/1.1"
    assert got.header("X-Org-Id") == "sec-org"
