"""gateway.model: the expires_in choices and the id shapes have one definition (every copy agrees), and the
record's pure helpers (the cascade's tree walk)."""

from __future__ import annotations

from gateway.webhooks import ENDPOINT_ID

import json
import re

from admin_api.openapi import build_openapi
import pytest

from gateway.model import (EXPIRY_CHOICES, GRACE_CHOICES, KEY_ID_PATTERN, ORG_ID_PATTERN, KeyRecord, Secret,
                           created_by_any, grace_end, rolled_secrets)
from gateway.store import AUDIT_CURSOR_PATTERN, CURSOR_PATTERN
from gateway.validation import is_key_id, is_org_id
from tests.support import ROOT

STATIC = ROOT / "admin_api" / "static"


def test_the_openapi_document_takes_the_choices_and_patterns_from_the_model():
    doc = build_openapi()
    expires_in = doc["components"]["schemas"]["CreateKeyRequest"]["properties"]["expires_in"]
    assert sorted(expires_in["enum"]) == sorted(EXPIRY_CHOICES)
    params = {p["name"]: p["schema"]["pattern"] for p in _path_parameters(doc["paths"]) if p["name"] != "file"}
    assert params == {"org_id": f"^{ORG_ID_PATTERN}$", "key_id": f"^{KEY_ID_PATTERN}$",
                      "webhook_id": ENDPOINT_ID.pattern}
    assert CURSOR_PATTERN.endswith(f"\\.{KEY_ID_PATTERN}$") and AUDIT_CURSOR_PATTERN.endswith(f"\\.(?:{KEY_ID_PATTERN}|org_settings):[0-9]{{1,10}}$")


def _path_parameters(node):
    if isinstance(node, dict):
        if node.get("in") == "path":
            yield node
        for value in node.values():
            yield from _path_parameters(value)
    elif isinstance(node, list):
        for value in node:
            yield from _path_parameters(value)


def test_validation_uses_the_model_patterns():
    assert is_org_id("acme.eu-1") and not is_org_id("-acme") and not is_org_id("a" * 65)
    assert is_key_id("key_" + "A" * 60) and not is_key_id("key_" + "A" * 61) and not is_key_id("key_a\n")


def test_the_page_copies_agree_with_the_model():
    # The page is static files (no templating, a strict CSP) and its form must work before the
    # first API answer, so it keeps its own copies; they must say what the model says.
    html = (STATIC / "index.html").read_text()
    select = html.split('<select id="key-expiry"', 1)[1].split("</select>", 1)[0]
    assert re.findall(r'<option value="([^"]+)"', select) == list(EXPIRY_CHOICES)
    js = (STATIC / "app.js").read_text()
    assert f"const ORG_ID = /^{ORG_ID_PATTERN}$/;" in js


NOW = 1_764_000_000_000


def _rec(key_id: str, by: str) -> KeyRecord:
    return KeyRecord(key_id, "o", "n", "sop_x", ("tasks:read",), "00" * 32, NOW, by)


def test_created_by_any_finds_one_level_and_skips_the_creators():
    records = [_rec("key_a", "operator"), _rec("key_b", "key:key_a"), _rec("key_c", "key:key_b"),
               _rec("key_d", "key:key_a"), _rec("key_e", "key:key_x")]
    assert created_by_any(records, {"key_a"}) == ["key_b", "key_d"]
    assert created_by_any(records, {"key_a", "key_b", "key_d"}) == ["key_c"]
    assert created_by_any(records, {"key_c"}) == []


# -- rolls (issue 14) ----------------------------------------------------------------------------


_NOW = 1_800_000_000_000


def _record(**fields) -> KeyRecord:
    base = dict(id="key_a", org_id="acme", name="n", prefix="sop_aaaaaa", scopes=("tasks:read",), digest="00" * 32,
                created_at=_NOW - 10, created_by="operator")
    return KeyRecord(**{**base, **fields})


def test_the_grace_choices_and_their_cap_at_the_key_expiry():
    assert GRACE_CHOICES == {"now": 0, "1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000}
    assert grace_end("now", _NOW, None) == _NOW
    assert grace_end("7d", _NOW, None) == _NOW + 7 * 86_400_000
    assert grace_end("24h", _NOW, _NOW + 5) == _NOW + 5  # never outlives the key
    with pytest.raises(KeyError):
        grace_end("2h", _NOW, None)


def test_a_first_roll_lists_the_new_secret_then_the_record_own_one_ending():
    new = Secret("key_b", "sop_bbbbbb", _NOW)
    assert rolled_secrets(_record(), new, _NOW + 60, _NOW) == (new, Secret("key_a", "sop_aaaaaa", _NOW - 10, _NOW + 60))


def test_a_second_roll_ends_the_oldest_now_and_drops_dead_ones():
    secrets = (Secret("key_b", "sop_bbbbbb", _NOW - 5), Secret("key_a", "sop_aaaaaa", _NOW - 10, _NOW + 99))
    new = Secret("key_c", "sop_cccccc", _NOW)
    assert rolled_secrets(_record(secrets=secrets), new, _NOW + 60, _NOW) == (
        new, Secret("key_b", "sop_bbbbbb", _NOW - 5, _NOW + 60), Secret("key_a", "sop_aaaaaa", _NOW - 10, _NOW))
    dead = (secrets[0], Secret("key_a", "sop_aaaaaa", _NOW - 10, _NOW - 1))
    assert [s.id for s in rolled_secrets(_record(secrets=dead), new, _NOW + 60, _NOW)] == ["key_c", "key_b"]


def test_key_secrets_before_the_first_roll_is_the_record_own():
    assert _record().key_secrets() == (Secret("key_a", "sop_aaaaaa", _NOW - 10),)
    assert _record(alias_id="key_b").key_secrets() == ()


def test_the_pages_limit_windows_agree_with_the_model():
    from gateway.ratelimit import MAX_LIMIT, WINDOWS
    js = (STATIC / "limits.js").read_text()
    assert f"export const WINDOWS = {json.dumps(list(WINDOWS))};" in js
    assert f"export const MAX_LIMIT = {MAX_LIMIT};" in js
