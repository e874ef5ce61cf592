"""The admin API with a real OpenID provider (oidc-provider under node, tests/support/oidc.py):
people's access tokens as Authorization: Bearer, their org and role from the claims, the
activity log naming them, key rotation and the provider being down.
The refusals of forged and mis-issued tokens are in tests/security/test_oidc_tokens.py."""

from __future__ import annotations

import base64
import json

import pytest
from joserfc import jwt

from tests.support import OPERATOR_TOKEN
from tests.support.oidc import new_key

BODY = {"name": "made by a person", "scopes": ["tasks:read"], "expires_in": "never"}


@pytest.fixture
async def oidc_stack(make_stack, oidc_provider):
    return await make_stack(admin_settings=oidc_provider.settings())


async def test_an_admin_creates_and_revokes_and_the_log_names_the_person(oidc_stack, oidc_provider):
    token = oidc_provider.token("alice")
    status, me, _ = await oidc_stack.admin_call("GET", "/v1/me", token)
    assert status == 200, me
    assert me["actor"] == "user:alice <alice@a.example>" and me["org_id"] == "org-a" and me["can_manage"] and me["grants_any"]
    status, created, _ = await oidc_stack.admin_call("POST", "/v1/orgs/org-a/api-keys", token, json=BODY)
    assert status == 201, created
    assert created["created_by"] == "user:alice <alice@a.example>"
    status, revoked, _ = await oidc_stack.admin_call("POST", f"/v1/orgs/org-a/api-keys/{created['id']}/revoke", token)
    assert status == 200, revoked
    assert revoked["revoked_by"] == "user:alice <alice@a.example>"
    status, log, _ = await oidc_stack.admin_call("GET", "/v1/orgs/org-a/audit-events", token)
    assert status == 200, log
    assert [(e["action"], e["actor"]) for e in log["data"]] == [
        ("api_key.revoked", "user:alice <alice@a.example>"), ("api_key.created", "user:alice <alice@a.example>")]
    # The key made by a person works at the gateway like any other.
    assert (await oidc_stack.call("GET", "/v1/tasks/1", created["key"]))[0] == 401  # revoked


async def test_a_person_may_set_leak_action_flag_and_the_log_names_them(oidc_stack, oidc_provider):
    # An org key may not weaken leak handling (test_org_settings.py); an org admin signed in may.
    token = oidc_provider.token("alice")
    await oidc_stack.admin_call("POST", "/v1/orgs/org-a/api-keys", token, json=BODY)
    status, body, _ = await oidc_stack.admin_call("PATCH", "/v1/orgs/org-a/settings", token, json={"leak_action": "flag"})
    assert (status, body["leak_action"]) == (200, "flag"), body
    _, log, _ = await oidc_stack.admin_call("GET", "/v1/orgs/org-a/audit-events", token)
    assert (log["data"][0]["action"], log["data"][0]["actor"], log["data"][0]["changes"]) == (
        "org.settings_updated", "user:alice <alice@a.example>", {"leak_action": {"before": "revoke", "after": "flag"}})


async def test_an_admin_may_grant_any_permission_of_the_catalogue(oidc_stack, oidc_provider):
    body = {**BODY, "scopes": ["tasks:read", "tasks:write", "guests:write"]}
    status, created, _ = await oidc_stack.admin_call("POST", "/v1/orgs/org-a/api-keys", oidc_provider.token("alice"),
                                                     json=body)
    assert status == 201, created
    assert (await oidc_stack.call("POST", "/v1/tasks", created["key"]))[0] == 200


async def test_a_viewer_reads_but_cannot_create_roll_or_revoke(oidc_stack, oidc_provider):
    key = await oidc_stack.create_key(org="org-a")
    token = oidc_provider.token("victor")
    status, me, _ = await oidc_stack.admin_call("GET", "/v1/me", token)
    assert status == 200 and (me["can_manage"], me["grants_any"], me["scopes"]) == (False, False, ["api_keys:read"]), me
    status, listed, _ = await oidc_stack.admin_call("GET", "/v1/orgs/org-a/api-keys", token)
    assert status == 200 and [k["id"] for k in listed["data"]] == [key["id"]]
    for method, path, body in (("POST", "/v1/orgs/org-a/api-keys", BODY),
                               ("POST", f"/v1/orgs/org-a/api-keys/{key['id']}/roll", {"grace_period": "now"}),
                               ("POST", f"/v1/orgs/org-a/api-keys/{key['id']}/revoke", None)):
        status, err, _ = await oidc_stack.admin_call(method, path, token, json=body)
        assert status == 403, (path, err)
        assert err["error"]["code"] == "insufficient_role" and err["error"]["required_scope"] == "api_keys:manage"
        assert err["error"]["role"] == "viewer" and "(viewer) does not allow this" in err["error"]["message"]
    assert (await oidc_stack.call("GET", "/v1/tasks/1", key["key"]))[0] == 200  # untouched


async def test_a_person_without_a_role_in_the_org_gets_403(oidc_stack, oidc_provider):
    status, err, _ = await oidc_stack.admin_call("GET", "/v1/orgs/org-a/api-keys", oidc_provider.token("nora"))
    assert status == 403 and err["error"]["code"] == "no_org_role", err
    assert "org-a" in err["error"]["message"]


@pytest.mark.parametrize("who", ["bob", "beth"])  # an admin and a viewer of org-b
async def test_a_person_of_another_org_gets_404_as_org_keys_do(oidc_stack, oidc_provider, who):
    key = await oidc_stack.create_key(org="org-a")
    token = oidc_provider.token(who)
    for method, path in (("GET", "/v1/orgs/org-a/api-keys"), ("GET", f"/v1/orgs/org-a/api-keys/{key['id']}"),
                         ("POST", f"/v1/orgs/org-a/api-keys/{key['id']}/revoke")):
        status, err, _ = await oidc_stack.admin_call(method, path, token)
        assert status == 404 and err["error"]["code"] == "org_not_found", (path, err)
    assert (await oidc_stack.call("GET", "/v1/tasks/1", key["key"]))[0] == 200


async def test_a_rotated_signing_key_is_fetched_on_its_unknown_kid(make_stack, oidc_install):
    from tests.support.oidc import OidcProvider

    provider = OidcProvider(oidc_install)  # its own: this test restarts it
    try:
        stack = await make_stack(admin_settings=provider.settings())
        assert (await stack.admin_call("GET", "/v1/me", provider.token("alice")))[0] == 200
        old = provider.token("alice")
        provider.rotate("k2")
        new = provider.token("alice")
        # Within --oidc-jwks-min-refetch of the last fetch an unknown kid is refused without a fetch ...
        status, err, _ = await stack.admin_call("GET", "/v1/me", new)
        assert status == 401 and err["error"]["code"] == "invalid_token"
        # ... after it, the JWKS is fetched again and the new key is accepted; the old one has left the JWKS.
        stack.clock.advance(31)
        status, me, _ = await stack.admin_call("GET", "/v1/me", new)
        assert status == 200 and me["actor"].startswith("user:alice"), me
        stack.clock.advance(31)
        assert (await stack.admin_call("GET", "/v1/me", old))[0] == 401
        # A kid that is not in the new JWKS either, once the JWKS was fetched again: refused.
        header, _, rest = new.partition(".")
        forged = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": "k3"},
                            json.loads(base64.urlsafe_b64decode(rest.split(".")[0] + "==")), new_key("k3"))
        stack.clock.advance(31)
        status, err, _ = await stack.admin_call("GET", "/v1/me", forged)
        assert status == 401 and err["error"]["code"] == "invalid_token"
        assert stack.admin_state.oidc.fetched_at == stack.clock()  # it was refetched for k3
    finally:
        provider.stop()


async def test_provider_down_is_503_and_other_credentials_still_work(make_stack, oidc_install):
    from tests.support.oidc import OidcProvider

    provider = OidcProvider(oidc_install)
    try:
        token = provider.token("alice")
        provider.stop()  # down before the admin API could load its metadata and keys
        stack = await make_stack(admin_settings=provider.settings())
        status, err, resp = await stack.admin_call("GET", "/v1/orgs/org-a/api-keys", token)
        assert status == 503 and err["error"]["code"] == "idp_unavailable", err
        assert resp.headers["Retry-After"] == "1"
        assert (await stack.admin_call("GET", "/v1/me", OPERATOR_TOKEN))[0] == 200
        key = await stack.create_key(org="org-a", scopes=("api_keys:manage",))
        status, listed, _ = await stack.admin_call("GET", "/v1/orgs/org-a/api-keys", key["key"])
        assert status == 200 and listed["data"], listed
        # Back up: the same token is accepted (nothing was cached from the failure) once the
        # back-off after the failed fetch (--oidc-backoff, 5 s) has passed.
        provider.start()
        assert (await stack.admin_call("GET", "/v1/orgs/org-a/api-keys", token))[0] == 503  # still backing off
        stack.clock.advance(6)
        assert (await stack.admin_call("GET", "/v1/orgs/org-a/api-keys", token))[0] == 200
    finally:
        provider.stop()


async def test_without_oidc_settings_a_provider_token_is_refused(stack, oidc_provider):
    status, err, _ = await stack.admin_call("GET", "/v1/me", oidc_provider.token("alice"))
    assert status == 401 and err["error"]["code"] == "invalid_token"
