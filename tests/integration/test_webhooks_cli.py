"""`gateway webhooks ...` (issue 17): the same endpoints, checks and JSON as the admin API, in Redis."""

from __future__ import annotations

import json

from tests.integration.test_cli import gateway


def test_webhooks_commands_manage_an_orgs_endpoints(redis_url):
    r = ("--redis", redis_url)
    assert gateway("keys", "create", "--org", "acme", "--name", "k", "--scope", "tasks:read", *r).returncode == 0
    made = gateway("webhooks", "create", "--org", "acme", "--url", "https://93.184.216.34/in", "--event",
                   "api_key.revoked,api_key.created", *r)
    assert made.returncode == 0, made.stderr
    hook = json.loads(made.stdout)
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["api_key.created", "api_key.revoked"]
    listed = json.loads(gateway("webhooks", "list", "--org", "acme", *r).stdout)
    assert [h["id"] for h in listed["data"]] == [hook["id"]] and "secret" not in listed["data"][0]
    shown = json.loads(gateway("webhooks", "show", "--org", "acme", hook["id"], *r).stdout)
    assert shown["url"] == "https://93.184.216.34/in" and "secret" not in shown
    edited = json.loads(gateway("webhooks", "edit", "--org", "acme", hook["id"], "--description", "ops", *r).stdout)
    assert edited["description"] == "ops"
    rotated = json.loads(gateway("webhooks", "rotate", "--org", "acme", hook["id"], *r).stdout)
    assert rotated["secret"] != hook["secret"]
    queued = json.loads(gateway("webhooks", "test", "--org", "acme", hook["id"], *r).stdout)
    deliveries = json.loads(gateway("webhooks", "deliveries", "--org", "acme", hook["id"], *r).stdout)
    assert [d["event_id"] for d in deliveries["data"]] == [queued["event_id"]]
    assert deliveries["data"][0]["state"] == "pending"
    refused = gateway("webhooks", "create", "--org", "acme", "--url", "http://169.254.169.254/", *r)
    assert refused.returncode == 2 and refused.stderr.startswith("gateway: --url: ") and "169.254.169.254" in refused.stderr
    assert gateway("webhooks", "delete", "--org", "acme", hook["id"], *r).returncode == 0
    gone = gateway("webhooks", "show", "--org", "acme", hook["id"], *r)
    assert gone.returncode == 1 and "no webhook endpoint" in gone.stderr
