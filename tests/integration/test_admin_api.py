"""The admin API: validation, org isolation, no privilege escalation, pagination, OpenAPI."""

from __future__ import annotations

import re

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from tests.support import OPERATOR_TOKEN, wait_for


async def test_create_returns_the_secret_once(stack):
    status, body, resp = await stack.admin_call(
        "POST", "/v1/orgs/acme/api-keys", json={"name": "  Zapier production ", "expires_in": "90d",
                                                "scopes": ["tasks:read", "tasks:write"]})
    assert status == 201, body
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Location"] == f"/v1/orgs/acme/api-keys/{body['id']}"
    assert re.fullmatch(r"sop_[0-9A-Za-z]{36}", body["key"])
    assert body["name"] == "Zapier production" and body["status"] == "active"
    assert body["prefix"] == body["key"][:10] and body["created_by"] == "operator"
    assert body["expires_at"] is not None and body["last_used_at"] is None
    status, one, _ = await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{body['id']}")
    assert status == 200 and "key" not in one and body["key"] not in str(one)
    # The secret is not stored anywhere in Redis, only its digest.
    for redis_key in await stack.store.redis.keys("*"):
        kind = await stack.store.redis.type(redis_key)
        dump = str(await stack.store.redis.hgetall(redis_key)) if kind == b"hash" else str(redis_key)
        assert body["key"] not in dump


@pytest.mark.parametrize(
    "payload, field, fragment",
    [
        ({"name": "", "scopes": ["tasks:read"]}, "name", "1 to 100"),
        ({"name": "   ", "scopes": ["tasks:read"]}, "name", "1 to 100"),
        ({"name": "x" * 101, "scopes": ["tasks:read"]}, "name", "1 to 100"),
        ({"name": "x" * 10_000, "scopes": ["tasks:read"]}, "name", "1 to 100"),
        ({"name": "bad\nname", "scopes": ["tasks:read"]}, "name", "control"),
        ({"name": "bad\u202ename", "scopes": ["tasks:read"]}, "name", "control"),
        ({"name": "ok", "scopes": []}, "scopes", ""),
        ({"name": "ok"}, "scopes", "missing"),
        ({"name": "ok", "scopes": ["tasks:read", "nope:nope", "tasks:reed"]}, "scopes", "nope:nope, tasks:reed"),
        ({"name": "ok", "scopes": ["tasks:read"], "expires_in": "2d"}, "expires_in", "never, 30d, 90d, 1y"),
        ({"name": "ok", "scopes": ["tasks:read"], "admin": True}, "admin", "unknown field"),
        ({"name": 5, "scopes": ["tasks:read"]}, "name", "Expected `str`"),
    ],
)
async def test_create_validation_names_the_field(stack, payload, field, fragment):
    status, body, _ = await stack.admin_call("POST", "/v1/orgs/acme/api-keys", json=payload)
    assert status == 400, body
    assert body["error"]["code"] == "validation_failed"
    assert body["error"]["field"] == field
    assert fragment in body["error"]["message"]
    assert await stack.store.redis.keys("gw:[ko]*") == []  # nothing written


@pytest.mark.parametrize(
    "data, content_type, status, code",
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"[1, 2]", "application/json", 400, "validation_failed"),
        (b'{"name": "x", "scopes": ["tasks:read"]}', "text/plain", 415, "unsupported_media_type"),
        (b'{"name": "' + b"x" * 70_000 + b'"}', "application/json", 413, "payload_too_large"),
    ],
)
async def test_malformed_bodies(stack, data, content_type, status, code):
    got, body, _ = await stack.admin_call("POST", "/v1/orgs/acme/api-keys", data=data,
                                          headers={"Content-Type": content_type})
    assert got == status and body["error"]["code"] == code
    assert await stack.store.redis.keys("gw:[ko]*") == []


async def test_credentials_are_required_and_checked(stack):
    status, body, resp = await stack.admin_call("GET", "/v1/orgs/acme/api-keys", token=None)
    assert status == 401 and body["error"]["code"] == "missing_token"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys", token="wrong-token-wrong-token")
    assert status == 401 and body["error"]["code"] == "invalid_token"


async def test_org_key_scopes_and_isolation(stack):
    reader = await stack.create_key(scopes=["api_keys:read", "tasks:read"])
    manager = await stack.create_key(scopes=["api_keys:manage", "tasks:read", "tasks:write"])
    foreign = await stack.create_key(org="globex", scopes=["tasks:read"])
    # read-only key: can list, cannot create or revoke
    assert (await stack.admin_call("GET", "/v1/orgs/acme/api-keys", token=reader["key"]))[0] == 200
    status, body, _ = await stack.admin_call("POST", "/v1/orgs/acme/api-keys", token=reader["key"],
                                             json={"name": "x", "scopes": ["tasks:read"]})
    assert status == 403 and body["error"]["required_scope"] == "api_keys:manage"
    status, body, _ = await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{manager['id']}/revoke", token=reader["key"])
    assert status == 403
    # manage key: own org only; another org's key and org answer 404
    status, body, _ = await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{foreign['id']}", token=manager["key"])
    assert status == 404 and body["error"]["code"] == "key_not_found"
    status, body, _ = await stack.admin_call("GET", "/v1/orgs/globex/api-keys", token=manager["key"])
    assert status == 404 and body["error"]["code"] == "org_not_found"
    status, body, _ = await stack.admin_call("POST", f"/v1/orgs/globex/api-keys/{foreign['id']}/revoke", token=manager["key"])
    assert status == 404
    assert (await stack.store.get(foreign["id"])).revoked_at is None
    # no privilege escalation: only scopes it holds
    status, body, _ = await stack.admin_call("POST", "/v1/orgs/acme/api-keys", token=manager["key"],
                                             json={"name": "x", "scopes": ["tasks:read", "reservations:write"]})
    assert status == 403 and body["error"]["code"] == "scope_not_grantable"
    assert body["error"]["scopes"] == ["reservations:write"]
    status, body, _ = await stack.admin_call("POST", "/v1/orgs/acme/api-keys", token=manager["key"],
                                             json={"name": "child", "scopes": ["tasks:write"]})
    assert status == 201 and body["created_by"] == f"key:{manager['id']}"
    # a key without api_keys:* cannot use the admin API at all
    status, body, _ = await stack.admin_call("GET", "/v1/orgs/globex/api-keys", token=foreign["key"])
    assert status == 403 and body["error"]["required_scope"] == "api_keys:read"


async def test_a_manage_key_can_grant_read_since_manage_implies_read(stack):
    manager = await stack.create_key(scopes=["api_keys:manage"])
    for scopes in (["api_keys:read"], ["api_keys:manage"], ["api_keys:read", "api_keys:manage"]):
        status, body, _ = await stack.admin_call("POST", "/v1/orgs/acme/api-keys", token=manager["key"],
                                                 json={"name": "delegate", "scopes": scopes})
        assert status == 201, body
        assert body["scopes"] == scopes
    # The implication runs one way only: a read key grants neither.
    reader = await stack.create_key(scopes=["api_keys:read"])
    status, body, _ = await stack.admin_call("POST", "/v1/orgs/acme/api-keys", token=reader["key"],
                                             json={"name": "x", "scopes": ["api_keys:read"]})
    assert status == 403 and body["error"]["code"] == "insufficient_scope"


async def test_revoked_admin_key_is_refused_immediately(stack):
    manager = await stack.create_key(scopes=["api_keys:manage"])
    await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{manager['id']}/revoke")
    status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys", token=manager["key"])
    assert status == 401 and body["error"]["code"] == "revoked_api_key"


async def test_list_newest_first_paginated_and_revoked_hidden(stack):
    created = []
    for i in range(7):
        created.append(await stack.create_key(name=f"key {i}"))
        stack.clock.advance(1)
    await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{created[3]['id']}/revoke")
    await stack.create_key(org="globex")
    seen, cursor = [], None
    while True:
        status, page, _ = await stack.admin_call(
            "GET", "/v1/orgs/acme/api-keys", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert status == 200 and len(page["data"]) <= 2
        seen += [k["name"] for k in page["data"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == ["key 6", "key 5", "key 4", "key 2", "key 1", "key 0"]
    status, page, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys", params={"include_revoked": "true"})
    assert [k["name"] for k in page["data"]] == [f"key {i}" for i in range(6, -1, -1)]
    assert page["data"][3]["status"] == "revoked" and page["data"][3]["revoked_by"] == "operator"
    for bad in ({"limit": 0}, {"limit": "x"}, {"cursor": "garbage"}, {"include_revoked": "maybe"}):
        status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys", params=bad)
        assert status == 400 and body["error"]["code"] == "validation_failed"


async def test_list_skips_keys_with_equal_creation_time(stack):
    ids = {(await stack.create_key(name=f"same {i}"))["id"] for i in range(5)}  # clock not advanced
    seen, cursor = [], None
    while True:
        _, page, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys",
                                            params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        seen += [k["id"] for k in page["data"]]
        if not (cursor := page["next_cursor"]):
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


async def test_revoke_is_idempotent_and_audited(stack):
    created = await stack.create_key()
    stack.clock.advance(5)
    s1, first, _ = await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/revoke")
    stack.clock.advance(5)
    s2, second, _ = await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/revoke")
    assert s1 == s2 == 200 and first["revoked_at"] == second["revoked_at"]
    status, events, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events")
    assert [(e["action"], e["actor"]) for e in events["data"]] == [
        ("api_key.revoked", "operator"), ("api_key.created", "operator")]
    record = await stack.store.get(created["id"])
    assert (record.created_by, record.revoked_by) == ("operator", "operator")
    assert first["revoked_at"] == second["revoked_at"] == events["data"][0]["at"]
    status, body, _ = await stack.admin_call("POST", "/v1/orgs/acme/api-keys/key_doesnotexist/revoke")
    assert status == 404 and body["error"]["code"] == "key_not_found"


async def test_cursors_of_the_documented_form_are_accepted(stack):
    """Any cursor matching the documented pattern is a page (maybe empty), never a 400."""
    await stack.create_key()
    for cursor in ("0.key_a", "999999999999999.key_" + "z" * 60, "1764170000123.key_0123456789ABCDEF"):
        status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys", params={"cursor": cursor})
        assert status == 200, (cursor, body)
    for cursor in ("0.key_a:0", "999999999999999.key_" + "z" * 60 + ":9999999999"):
        status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events", params={"cursor": cursor})
        assert status == 200, (cursor, body)


async def test_an_org_exists_from_its_first_key_on(stack):
    missing = "/v1/orgs/newco"
    for method, path in (("GET", "/api-keys"), ("GET", "/api-keys/key_0123456789ABCDEF"),
                         ("POST", "/api-keys/key_0123456789ABCDEF/revoke"), ("GET", "/audit-events")):
        status, body, _ = await stack.admin_call(method, missing + path)
        assert status == 404 and body["error"]["code"] == "org_not_found", (method, path, body)
    created = await stack.create_key(org="newco")  # creating its first key creates the org
    status, body, _ = await stack.admin_call("GET", missing + "/api-keys")
    assert status == 200 and [k["id"] for k in body["data"]] == [created["id"]]
    status, body, _ = await stack.admin_call("GET", missing + "/api-keys/key_0123456789ABCDEF")
    assert status == 404 and body["error"]["code"] == "key_not_found"
    await stack.admin_call("POST", f"{missing}/api-keys/{created['id']}/revoke")
    status, body, _ = await stack.admin_call("GET", missing + "/api-keys")  # revoked keys still make an org
    assert status == 200 and body["data"] == []
    assert (await stack.admin_call("GET", missing + "/audit-events"))[0] == 200


async def test_permissions_catalogue_is_searchable(stack):
    status, body, _ = await stack.admin_call("GET", "/v1/permissions")
    assert status == 200
    scopes = {p["scope"]: p for p in body["data"]}
    assert scopes["tasks:read"] == {"scope": "tasks:read", "resource": "tasks", "action": "read", "label": "View tasks"}
    status, body, _ = await stack.admin_call("GET", "/v1/permissions", params={"q": "manage reserv"})
    assert [p["scope"] for p in body["data"]] == ["reservations:write"]


async def test_store_fault_is_503(make_stack, redis_server):
    stack = await make_stack()
    # The start-up backfill of the activity log has run and its connections are closed: the
    # next command needs a new one, which the password below refuses.
    await wait_for(lambda: redis_server.client.exists(stack.store.backfilled))
    await stack.admin_state.store.redis.connection_pool.disconnect()
    redis_server.client.config_set("requirepass", "now-locked")
    try:
        status, body, resp = await stack.admin_call("POST", "/v1/orgs/acme/api-keys",
                                                    json={"name": "x", "scopes": ["tasks:read"]})
    finally:
        redis_server.client.execute_command("AUTH", "now-locked")
        redis_server.client.config_set("requirepass", "")
    assert status == 503 and body["error"]["code"] == "store_unavailable"
    assert resp.headers["Retry-After"]


async def test_openapi_document_validates_and_matches_routes(stack):
    status, doc, _ = await stack.admin_call("GET", "/openapi.json", token=None)
    assert status == 200
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    from admin_api.app import make_admin_app
    from gateway.config import AdminSettings

    app = make_admin_app(AdminSettings(operator_tokens=(OPERATOR_TOKEN,)))
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    assert documented == served
    await app[__import__("admin_api.app", fromlist=["ADMIN"]).ADMIN].store.redis.aclose()


async def test_openapi_documents_error_headers_and_time_formats(stack):
    _, doc, _ = await stack.admin_call("GET", "/openapi.json", token=None)
    validate(doc)
    statuses = set()
    for ops in doc["paths"].values():
        for method, op in ops.items():
            if method == "parameters":
                continue
            for status, response in op["responses"].items():
                statuses.add(status)
                wanted = {"401": "WWW-Authenticate", "429": "Retry-After", "503": "Retry-After"}.get(status)
                if wanted:
                    assert response["headers"][wanted]["required"] is True, (method, status)
    assert {"401", "429", "503"} <= statuses
    schemas = doc["components"]["schemas"]
    for name, fields in (("ApiKey", ("created_at", "expires_at", "revoked_at", "last_used_at")), ("AuditEvent", ("at",))):
        for field in fields:
            prop = schemas[name]["properties"][field]
            strings = [s for s in prop.get("anyOf", [prop]) if s.get("type") == "string"]
            assert strings and all(s["format"] == "date-time" for s in strings), (name, field)
    # What the server sends is what the document says.
    status, _, resp = await stack.admin_call("GET", "/v1/me", token=None)
    assert status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_responses_match_the_openapi_schemas(stack):
    _, doc, _ = await stack.admin_call("GET", "/openapi.json", token=None)

    def check(body, name):
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        OAS31Validator(schema).validate(body)

    created = await stack.create_key()
    check(created, "CreatedApiKey")
    check((await stack.admin_call("GET", "/v1/orgs/acme/api-keys"))[1], "ApiKeyList")
    check((await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{created['id']}"))[1], "ApiKey")
    check((await stack.admin_call("GET", "/v1/permissions"))[1], "PermissionList")
    check((await stack.admin_call("GET", "/v1/orgs/acme/audit-events"))[1], "AuditEventList")
    check((await stack.admin_call("GET", "/v1/orgs/acme/api-keys/nope"))[1], "Error")
    check((await stack.admin_call("POST", "/v1/orgs/acme/api-keys", json={"name": ""}))[1], "Error")
