"""List cursors: the pattern /openapi.json documents is exactly what the server decodes."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from admin_api.openapi import build_openapi
from gateway.store.codec import (decode_audit_cursor, decode_cursor, encode_audit_cursor, encode_cursor)


def documented_pattern(path: str) -> str:
    params = build_openapi()["paths"][path]["get"]["parameters"]
    (cursor,) = [p for p in params if p["name"] == "cursor"]
    return cursor["schema"]["pattern"]


KEYS = documented_pattern("/v1/orgs/{org_id}/api-keys")
AUDIT = documented_pattern("/v1/orgs/{org_id}/audit-events")
# Text near the grammar, so that both "matches" and "does not match" come up often.
NEAR = st.text(alphabet="0123456789.crkey_AZaz=-+ \n\u0661", max_size=24) | st.builds(
    lambda s, k, tail: f"{s}.{k}{tail}", st.integers(-5, 10**16).map(str), st.sampled_from(["key_", "r.key_", "c.key_", "x.key_", "key"]),
    st.text(alphabet="aZ09_-\n", max_size=62))


@settings(max_examples=300)
@given(st.from_regex(KEYS, fullmatch=True))
def test_every_documented_key_list_cursor_decodes(cursor):
    if cursor:  # empty means the first page; the API does not decode it
        score, key_id = decode_cursor(cursor)
        assert score >= 0 and key_id.startswith("key_")


@settings(max_examples=300)
@given(st.from_regex(AUDIT, fullmatch=True))
def test_every_documented_audit_cursor_decodes(cursor):
    if cursor:
        at, _, key_id = decode_audit_cursor(cursor)
        assert at >= 0 and key_id.startswith("key_")


@settings(max_examples=500)
@given(NEAR)
def test_the_decoders_accept_nothing_the_pattern_refuses(text):
    for pattern, decode in ((KEYS, decode_cursor), (AUDIT, decode_audit_cursor)):
        try:
            decode(text)
            decoded = True
        except ValueError:
            decoded = False
        # ECMA-262 semantics: "$" is the end of the string (no final-newline exception).
        assert decoded == (text != "" and re.fullmatch(pattern[1:-1], text) is not None), (pattern, text)


def test_cursors_made_by_the_store_match_the_pattern():
    for cursor in (encode_cursor(0, "key_a"), encode_cursor(1764170000123, "key_" + "Z" * 16)):
        assert re.fullmatch(KEYS[1:-1], cursor)
    for cursor in (encode_audit_cursor(5, True, "key_a"), encode_audit_cursor(5, False, "key_b")):
        assert re.fullmatch(AUDIT[1:-1], cursor)
    assert decode_audit_cursor(encode_audit_cursor(5, True, "key_a")) == (5, True, "key_a")
