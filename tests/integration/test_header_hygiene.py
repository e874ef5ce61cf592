"""What reaches the upstream: no spoofed identity, no credentials, exactly one gateway value."""

from __future__ import annotations

import pytest

from tests.support.rawhttp import get, raw_request

IDENTITY = ("X-Org-Id", "X-Api-Key-Id", "X-Api-Key-Scopes", "X-Request-Id")


def values(record, name: str) -> list[str]:
    folded = name.lower().replace("_", "-")
    return [v for k, v in record["headers"] if k.lower().replace("_", "-") == folded]


def names(record) -> list[str]:
    return [k.lower().replace("_", "-") for k, _ in record["headers"]]


@pytest.mark.parametrize("spelling", ["X-Org-Id", "x-org-id", "X-ORG-ID", "X_Org_Id", "x-org_id"])
async def test_spoofed_identity_headers_never_reach_the_upstream(stack, spelling):
    created = await stack.create_key()
    spoof = [(spelling, "evil-org")] * 3 + [("X-Api-Key-Id", "key_evil"), ("x_api_key_scopes", "admin:all"),
                                           ("X-Request-Id", "req_evil"), ("X-Api-Key-Scopes-Extra", "1")]
    raw = await raw_request(stack.gateway, get("/v1/tasks", [("Authorization", f"Bearer {created['key']}"), *spoof]))
    assert raw.status == 200, raw.body
    record = stack.received[-1]
    assert values(record, "X-Org-Id") == ["acme"]
    assert values(record, "X-Api-Key-Id") == [created["id"]]
    assert values(record, "X-Api-Key-Scopes") == ["tasks:read"]
    assert values(record, "X-Request-Id") == [raw.header("X-Request-Id")]
    assert "x-api-key-scopes-extra" not in names(record)


async def test_spoofed_identity_is_removed_on_public_routes_too(stack):
    raw = await raw_request(stack.gateway, get("/v1/status", {"X-Org-Id": "evil", "X_Api_Key_Id": "key_evil"}))
    assert raw.status == 200
    record = stack.received[-1]
    assert "x-org-id" not in names(record) and "x-api-key-id" not in names(record)


async def test_credentials_never_reach_the_upstream(stack):
    created = await stack.create_key()
    for header in ("Authorization", "X-API-Key"):
        value = f"Bearer {created['key']}" if header == "Authorization" else created["key"]
        raw = await raw_request(stack.gateway, get("/v1/tasks", {header: value}))
        assert raw.status == 200
        assert created["key"] not in str(stack.received[-1])


async def test_connection_header_cannot_remove_injected_headers(stack):
    created = await stack.create_key()
    request = get("/v1/tasks", {"Authorization": f"Bearer {created['key']}", "X-Custom": "drop-me"},
                  connection="close, X-Org-Id, X-Api-Key-Id, X-Custom")
    raw = await raw_request(stack.gateway, request)
    assert raw.status == 200, raw.body
    record = stack.received[-1]
    assert values(record, "X-Org-Id") == ["acme"]
    assert values(record, "X-Api-Key-Id") == [created["id"]]
    assert "x-custom" not in names(record)


async def test_method_override_and_forwarding_headers(stack):
    created = await stack.create_key()
    raw = await raw_request(stack.gateway, get("/v1/tasks", {
        "Authorization": f"Bearer {created['key']}",
        "X-HTTP-Method-Override": "DELETE", "X-Method-Override": "DELETE", "X-HTTP-Method": "DELETE",
        "X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6", "X-Forwarded-Host": "evil.example",
    }))
    assert raw.status == 200
    record = stack.received[-1]
    assert record["method"] == "GET"
    assert not {"x-http-method-override", "x-method-override", "x-http-method", "forwarded"} & set(names(record))
    assert values(record, "X-Forwarded-For") == ["127.0.0.1"]
    assert values(record, "X-Forwarded-Proto") == ["http"]
    assert values(record, "X-Forwarded-Host") == ["127.0.0.1"]


async def test_trusted_proxy_forwarding_chain_is_kept(make_stack):
    stack = await make_stack(trusted_proxies=("127.0.0.0/8",))
    created = await stack.create_key()
    raw = await raw_request(stack.gateway, get("/v1/tasks", {
        "Authorization": f"Bearer {created['key']}", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
    }))
    assert raw.status == 200
    record = stack.received[-1]
    assert values(record, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert values(record, "X-Forwarded-Proto") == ["https"]


async def test_response_carries_request_id_and_upstream_headers(stack):
    created = await stack.create_key()
    status, body, resp = await stack.call("GET", "/v1/tasks", created["key"])
    assert status == 200
    assert resp.headers["X-Upstream"] == "echo"
    assert resp.headers.getall("X-Request-Id") == [values(body, "X-Request-Id")[0]]
