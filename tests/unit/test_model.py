"""gateway.model: the expires_in choices and the id shapes have one definition (every copy agrees), and the
record's pure helpers (the cascade's tree walk)."""

from __future__ import annotations

import re

from admin_api.openapi import build_openapi
from gateway.model import EXPIRY_CHOICES, KEY_ID_PATTERN, ORG_ID_PATTERN, KeyRecord, created_by_any
from gateway.store import AUDIT_CURSOR_PATTERN, CURSOR_PATTERN
from gateway.validation import is_key_id, is_org_id
from tests.support import ROOT

STATIC = ROOT / "admin_api" / "static"


def test_the_openapi_document_takes_the_choices_and_patterns_from_the_model():
    doc = build_openapi()
    expires_in = doc["components"]["schemas"]["CreateKeyRequest"]["properties"]["expires_in"]
    assert sorted(expires_in["enum"]) == sorted(EXPIRY_CHOICES)
    params = {p["name"]: p["schema"]["pattern"] for p in _path_parameters(doc["paths"]) if p["name"] != "file"}
    assert params == {"org_id": f"^{ORG_ID_PATTERN}$", "key_id": f"^{KEY_ID_PATTERN}$"}
    assert CURSOR_PATTERN.endswith(f"\\.{KEY_ID_PATTERN}$") and AUDIT_CURSOR_PATTERN.endswith(f"\\.{KEY_ID_PATTERN}:[0-9]{{1,10}}$")


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
