"""Org settings (issue 17): GET/PATCH /v1/orgs/{org_id}/settings and `gateway orgs settings`, over a
real redis-server."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.integration.test_cli import gateway


async def test_settings_read_defaults_and_a_patch_changes_only_what_it_names(stack):
    created = await stack.create_key(scopes=("api_keys:manage", "api_keys:read"))
    status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/settings")
    assert (status, body) == (200, {"org_id": "acme", "leak_action": "revoke", "unused_days": 30,
                                    "expire_unused_days": None})
    status, body, _ = await stack.admin_call("PATCH", "/v1/orgs/acme/settings", token=created["key"],
                                             json={"expire_unused_days": 365})
    assert (status, body["leak_action"], body["expire_unused_days"]) == (200, "revoke", 365)
    status, body, _ = await stack.admin_call("PATCH", "/v1/orgs/acme/settings", json={"leak_action": "flag"})
    assert (status, body["leak_action"], body["unused_days"], body["expire_unused_days"]) == (200, "flag", 30, 365)
    assert (await stack.store.orgs.get("acme")).leak_action == "flag"
    status, body, _ = await stack.admin_call("PATCH", "/v1/orgs/acme/settings", json={"expire_unused_days": None})
    assert body["expire_unused_days"] is None and body["leak_action"] == "flag"


@pytest.mark.parametrize("patch, field", [
    ({"leak_action": "delete"}, "leak_action"), ({"unused_days": 0}, "unused_days"),
    ({"unused_days": "30"}, "unused_days"), ({"expire_unused_days": 5000}, "expire_unused_days"),
    ({"unused_days": True}, "unused_days"), ({"other": 1}, "other"), ([1], "body"),
])
async def test_a_bad_patch_is_a_400_naming_the_field_and_changes_nothing(stack, patch, field):
    await stack.create_key()
    status, body, _ = await stack.admin_call("PATCH", "/v1/orgs/acme/settings", json=patch)
    assert (status, body["error"]["code"], body["error"]["field"]) == (400, "validation_failed", field), body
    assert await stack.store.redis.exists(stack.store.orgs.settings_key("acme")) == 0


async def test_reading_needs_read_and_changing_needs_manage_in_the_same_org(stack):
    reader = await stack.create_key(scopes=("api_keys:read",))
    other = await stack.create_key(org="other", scopes=("api_keys:manage", "api_keys:read"))
    assert (await stack.admin_call("GET", "/v1/orgs/acme/settings", token=reader["key"]))[0] == 200
    status, body, _ = await stack.admin_call("PATCH", "/v1/orgs/acme/settings", token=reader["key"],
                                             json={"leak_action": "flag"})
    assert (status, body["error"]["code"]) == (403, "insufficient_scope")
    status, body, _ = await stack.admin_call("PATCH", "/v1/orgs/acme/settings", token=other["key"],
                                             json={"leak_action": "flag"})
    assert status in (403, 404)
    assert (await stack.admin_call("GET", "/v1/orgs/acme/settings", token=None))[0] == 401
    assert (await stack.admin_call("GET", "/v1/orgs/nobody/settings"))[1]["error"]["code"] == "org_not_found"
    assert (await stack.store.orgs.get("acme")).leak_action == "revoke"


def test_the_cli_shows_and_changes_settings(redis_url):
    def run(*flags):
        return gateway("orgs", "settings", "--redis", redis_url, "--org", "acme", *flags)
    shown = run()
    assert shown.returncode == 0 and json.loads(shown.stdout)["leak_action"] == "revoke"
    changed = run("--leak-action", "flag", "--unused-days", "90", "--expire-unused-days", "365")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout) == {"org_id": "acme", "leak_action": "flag", "unused_days": 90,
                                          "expire_unused_days": 365}
    assert json.loads(run("--expire-unused-days", "off").stdout)["expire_unused_days"] is None
    for flags, fragment in ((("--unused-days", "0"), "--unused-days"), (("--unused-days", "x"), "--unused-days"),
                            (("--expire-unused-days", "never"), "--expire-unused-days")):
        bad = run(*flags)
        assert bad.returncode != 0 and fragment in bad.stderr
    assert json.loads(run().stdout)["unused_days"] == 90


async def test_concurrent_patches_of_different_fields_both_stay(stack):
    # Each PATCH writes only the fields it names, atomically: none overwrites another's field with
    # the value it read before.
    await stack.create_key()
    for round_ in range(10):
        days = 40 + round_
        action = "flag" if round_ % 2 == 0 else "revoke"
        answers = await asyncio.gather(*[
            stack.admin_call("PATCH", "/v1/orgs/acme/settings", json=patch) for patch in (
                {"leak_action": action}, {"unused_days": days}, {"expire_unused_days": 100 + round_})] * 3)
        assert all(status == 200 for status, _, _ in answers), answers
        stored = await stack.store.orgs.get("acme")
        assert (stored.leak_action, stored.unused_days, stored.expire_unused_days) == (action, days, 100 + round_)


async def test_a_settings_change_is_an_audit_event_with_its_actor_and_before_and_after(stack):
    manager = await stack.create_key(scopes=("api_keys:manage", "api_keys:read"))
    status, _, _ = await stack.admin_call("PATCH", "/v1/orgs/acme/settings", token=manager["key"],
                                          json={"unused_days": 90, "expire_unused_days": 365})
    assert status == 200
    assert (await stack.admin_call("PATCH", "/v1/orgs/acme/settings", json={"leak_action": "flag",
                                                                          "unused_days": 90}))[0] == 200
    assert (await stack.admin_call("PATCH", "/v1/orgs/acme/settings", json={"unused_days": 90}))[0] == 200  # no change
    status, page, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events")
    assert status == 200, page
    settings = [e for e in page["data"] if e["action"] == "org.settings_updated"]
    assert [(e["id"], e["key_id"], e["actor"], e["changes"]) for e in settings] == [
        ("org_settings:2", None, "operator", {"leak_action": {"before": "revoke", "after": "flag"}}),
        ("org_settings:1", None, f"key:{manager['id']}", {"unused_days": {"before": 30, "after": 90},
                                                       "expire_unused_days": {"before": None, "after": 365}}),
    ]
    assert page["data"][-1]["action"] == "api_key.created"  # the key events share the log, newest first
    # Paginated across settings and key events alike: a cursor after a settings event works.
    status, first, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events?limit=1")
    assert first["data"][0]["id"] == "org_settings:2" and first["next_cursor"]
    status, rest, _ = await stack.admin_call("GET", f"/v1/orgs/acme/audit-events?limit=5&cursor={first['next_cursor']}")
    assert status == 200 and [e["id"] for e in rest["data"]][:1] == ["org_settings:1"]


async def test_an_api_key_cannot_weaken_leak_handling(stack):
    # SECURITY: a leaked key holding api_keys:manage must not switch its org to flag-only, so that
    # its own later leak reports leave it active. A person or the operator may.
    manager = await stack.create_key(scopes=("api_keys:manage", "api_keys:read"))
    status, body, _ = await stack.admin_call("PATCH", "/v1/orgs/acme/settings", token=manager["key"],
                                             json={"leak_action": "flag"})
    assert (status, body["error"]["code"]) == (403, "leak_handling_needs_person"), body
    assert (await stack.store.orgs.get("acme")).leak_action == "revoke"
    assert not [e for e in (await stack.admin_call("GET", "/v1/orgs/acme/audit-events"))[1]["data"]
                if e["action"] == "org.settings_updated"]
    # Strengthening (back to revoke) and the other fields stay open to keys.
    assert (await stack.admin_call("PATCH", "/v1/orgs/acme/settings", json={"leak_action": "flag"}))[0] == 200
    status, body, _ = await stack.admin_call("PATCH", "/v1/orgs/acme/settings", token=manager["key"],
                                             json={"leak_action": "revoke", "unused_days": 45})
    assert (status, body["leak_action"], body["unused_days"]) == (200, "revoke", 45)
