"""Signed identity headers end to end: what the upstream receives verifies with gateway_verify."""

from __future__ import annotations

import pytest

from gateway_verify import BadSignature, ExpiredSignature, UnknownKeyId, verify_request
from tests.support.rawhttp import get, raw_request

OLD = "2025-01:old-secret-0123456789abcdefghijklmnopqrstu"
NEW = "2025-07:new-secret-0123456789abcdefghijklmnopqrstu"
SIGNATURE_HEADERS = ("x-gateway-signature", "x-gateway-signature-key-id", "x-gateway-timestamp")


def values(record, name: str) -> list[str]:
    folded = name.lower().replace("_", "-")
    return [v for k, v in record["headers"] if k.lower().replace("_", "-") == folded]


def verify(stack, record, secrets=OLD, **kw):
    """What a backend does with the request it received."""
    return verify_request(record["method"], record["path"], record["headers"], secrets,
                          now=kw.pop("now", stack.clock()), **kw)


async def test_the_upstream_gets_a_signature_that_verifies(make_stack):
    stack = await make_stack(signing_secrets=(OLD,))
    created = await stack.create_key(scopes=("tasks:read", "tasks:write"))
    status, body, resp = await stack.call("GET", "/v1/tasks/t%2042?limit=5&q=a+b", created["key"])
    assert status == 200, body
    record = stack.received[-1]
    assert record["path"] == "/v1/tasks/t%2042?limit=5&q=a+b"
    for name in SIGNATURE_HEADERS:
        assert len(values(record, name)) == 1, name
    assert values(record, "X-Gateway-Signature-Key-Id") == ["2025-01"]
    assert values(record, "X-Gateway-Timestamp") == [str(int(stack.clock()))]
    identity = verify(stack, record)
    assert identity.org_id == "acme"
    assert identity.key_id == created["id"]
    assert set(identity.scopes) == {"tasks:read", "tasks:write"}
    assert identity.request_id == resp.headers["X-Request-Id"]
    assert identity.authenticated


async def test_what_was_received_does_not_verify_for_another_request(make_stack):
    stack = await make_stack(signing_secrets=(OLD,))
    created = await stack.create_key(scopes=("tasks:read", "tasks:write"))
    status, _, _ = await stack.call("PATCH", "/v1/tasks/42?notify=1", created["key"], json={"done": True})
    assert status == 200
    record = stack.received[-1]
    assert verify(stack, record).key_id == created["id"]
    for method, path in [("DELETE", record["path"]), ("PATCH", "/v1/tasks/43?notify=1"),
                         ("PATCH", "/v1/tasks/42"), ("PATCH", "/v1/tasks/42?notify=0")]:
        with pytest.raises(BadSignature):
            verify(stack, {**record, "method": method, "path": path})
    with pytest.raises(ExpiredSignature):
        verify(stack, record, now=stack.clock() + 301)


@pytest.mark.parametrize("spelling", ["X-Gateway-Signature", "x-gateway-signature", "X_Gateway_Signature"])
async def test_client_sent_signature_headers_are_stripped(make_stack, spelling):
    stack = await make_stack(signing_secrets=(OLD,))
    created = await stack.create_key()
    forged = [(spelling, "v1=" + "0" * 64), ("X-Gateway-Signature-Key-Id", "evil"),
              ("x-gateway-timestamp", "1"), ("X-Gateway-Anything", "x")]
    raw = await raw_request(stack.gateway, get("/v1/tasks", [("Authorization", f"Bearer {created['key']}"), *forged]))
    assert raw.status == 200, raw.body
    record = stack.received[-1]
    assert values(record, "X-Gateway-Signature-Key-Id") == ["2025-01"]
    assert values(record, "X-Gateway-Signature") != ["v1=" + "0" * 64]
    assert values(record, "X-Gateway-Anything") == []
    assert verify(stack, record).key_id == created["id"]


async def test_public_routes_are_signed_with_an_empty_identity(make_stack):
    stack = await make_stack(signing_secrets=(OLD,))
    raw = await raw_request(stack.gateway, get("/v1/status", {"X-Org-Id": "evil", "X-Gateway-Signature": "v1=0"}))
    assert raw.status == 200, raw.body
    record = stack.received[-1]
    assert values(record, "X-Org-Id") == []
    identity = verify(stack, record)
    assert (identity.org_id, identity.key_id, identity.scopes) == ("", "", ())
    assert identity.request_id == raw.header("X-Request-Id")
    assert not identity.authenticated
    # Someone who reaches the backend directly cannot add an identity to a public-route signature.
    forged = {**record, "headers": record["headers"] + [["X-Org-Id", "acme"], ["X-Api-Key-Id", "key_x"]]}
    with pytest.raises(BadSignature):
        verify(stack, forged)


async def test_the_signed_path_includes_the_upstream_base_path(make_stack, echo_server):
    base = str(echo_server.make_url("")).rstrip("/") + "/internal/api"
    stack = await make_stack(signing_secrets=(OLD,), upstream=base)
    created = await stack.create_key()
    status, body, _ = await stack.call("GET", "/v1/tasks?page=2", created["key"])
    assert status == 200, body
    record = stack.received[-1]
    assert record["path"] == "/internal/api/v1/tasks?page=2"
    assert verify(stack, record).key_id == created["id"]


async def test_rotation_signs_with_the_first_secret(make_stack):
    stack = await make_stack(signing_secrets=(NEW, OLD))
    created = await stack.create_key()
    status, _, _ = await stack.call("GET", "/v1/tasks", created["key"])
    assert status == 200
    record = stack.received[-1]
    assert values(record, "X-Gateway-Signature-Key-Id") == ["2025-07"]
    assert verify(stack, record, secrets=f"{NEW},{OLD}").key_id == created["id"]
    assert verify(stack, record, secrets=NEW).key_id == created["id"]
    with pytest.raises(UnknownKeyId):
        verify(stack, record, secrets=OLD)


async def test_nothing_is_signed_without_secrets(stack):
    created = await stack.create_key()
    raw = await raw_request(stack.gateway, get("/v1/tasks", [("Authorization", f"Bearer {created['key']}"),
                                                             ("X-Gateway-Signature", "v1=" + "0" * 64)]))
    assert raw.status == 200, raw.body
    record = stack.received[-1]
    assert not [k for k, _ in record["headers"] if k.lower().startswith("x-gateway-")]
