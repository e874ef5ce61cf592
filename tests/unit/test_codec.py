"""The store's encodings: key records, usage values and buckets, and list cursors (the pattern
/openapi.json documents is exactly what the server decodes)."""

from __future__ import annotations

import re

import msgspec

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admin_api.openapi import build_openapi
from gateway.model import KeyRecord
from gateway.store import codec
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
    st.text(alphabet="aZ09_-:\n", max_size=62))


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
        at, key_id, version = decode_audit_cursor(cursor)
        assert at >= 0 and (key_id.startswith("key_") or key_id == "org_settings") and version >= 0


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
    for cursor in (encode_audit_cursor(5, "key_a", 1), encode_audit_cursor(1764170000123, "key_" + "Z" * 16, 12)):
        assert re.fullmatch(AUDIT[1:-1], cursor)
    assert decode_audit_cursor(encode_audit_cursor(5, "key_a", 12)) == (5, "key_a", 12)


def test_event_ids_parse_back():
    assert codec.parse_event_id(codec.event_id("key_a", 12).encode()) == ("key_a", 12)
    for bad in ("key_a", "key_a:", "key_a:x", "key_a:\u0661"):
        assert codec.parse_event_id(bad) is None


# -- records and usage --------------------------------------------------------------------------------------

def make_record(**kw) -> KeyRecord:
    base = dict(id="key_0123456789ABCDEF", org_id="acme", name="Zapier é", prefix="sop_AbC123",
                scopes=("tasks:read", "reservations:read"), digest="ab" * 32, created_at=1_764_000_000_123,
                created_by="operator")
    return KeyRecord(**{**base, **kw})


@pytest.mark.parametrize("record", [
    make_record(),
    make_record(expires_at=1_800_000_000_000),
    make_record(revoked_at=1_764_000_001_000, revoked_by="key:key_x"),
])
def test_records_round_trip_through_their_hash_fields(record):
    fields = codec.encode_record(record)
    raw = {str(k).encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in zip(fields[::2], fields[1::2], strict=True)}
    assert codec.decode_record(record.id, raw) == record
    assert codec.decode_record(record.id, [x for kv in raw.items() for x in kv]) == record  # Lua's flat list
    assert len(raw[b"d"]) == 32  # the digest is stored raw


@pytest.mark.parametrize("raw", [{}, {b"o": b"acme"}, {b"o": b"x", b"n": b"n", b"p": b"p", b"s": b"a:b",
                                                       b"d": b"short", b"c": b"1", b"C": b"t"}])
def test_half_written_or_foreign_hashes_are_no_record(raw):
    assert codec.decode_record("key_x", raw) is None


def test_usage_values_and_merge():
    assert codec.decode_usage(codec.encode_usage(1_764_000_000_123, 42)) == (1_764_000_000_123, 42)
    assert codec.decode_usage(None) is None and codec.decode_usage(b"garbage") is None
    assert codec.merge_usage([None, (5, 2), (9, 1), None]) == (9, 3)
    assert codec.merge_usage([None, None]) == (None, 0)


def test_usage_buckets_spread_key_ids_and_keep_them_recoverable():
    from gateway import keys

    ids = [keys.parse_key(keys.generate_key()).key_id for _ in range(20_000)]
    buckets = {}
    for key_id in ids:
        bucket, field = codec.usage_bucket(key_id)
        assert field + bucket[:2] == key_id[4:] and len(bucket) == 3
        buckets[bucket] = buckets.get(bucket, 0) + 1
    assert len(buckets) > 9000 and max(buckets.values()) < 20  # about 1.3 per bucket, none crowded
    assert codec.usage_bucket("k1") == ("_", "k1")


def test_a_record_keeps_its_version_and_one_without_reads_as_zero():
    from gateway.model import KeyRecord
    from gateway.store.codec import decode_record, encode_record

    r = KeyRecord(id="key_a", org_id="o", name="n", prefix="sop_ab", scopes=("a:b",), digest="00" * 32,
                  created_at=1, created_by="operator", version=7)
    raw = encode_record(r)
    assert decode_record("key_a", dict(zip(raw[::2], [str(v).encode() if not isinstance(v, bytes) else v
                                                      for v in raw[1::2]], strict=True))).version == 7
    old = encode_record(msgspec.structs.replace(r, version=0))
    assert "v" not in old[::2]


def test_events_round_trip_and_garbage_is_no_event():
    from gateway.model import Change, KeyEvent
    from gateway.store.codec import decode_event, encode_event

    e = KeyEvent("api_key.updated", "key_a", "o", "operator", 5, 3,
                 {"scopes": Change(["a:b", "c:d"], ["a:b"]), "name": Change("x", "y")})
    stored = encode_event(e)
    # Stored without the key id (the log's name holds it) and the org id (the record's): the reader gives them.
    assert set(msgspec.json.decode(stored)) == {"action", "actor", "at", "version", "changes"}
    assert decode_event(stored, "key_a", "o") == e
    assert decode_event(stored, "key_b", "p") == msgspec.structs.replace(e, key_id="key_b", org_id="p")
    assert decode_event(b"{not json", "key_a", "o") is None
    assert decode_event(b'{"action": 1}', "key_a", "o") is None


def test_events_stored_with_their_ids_must_name_the_readers_key_and_org():
    from gateway.model import KeyEvent
    from gateway.store.codec import decode_event

    e = KeyEvent("api_key.created", "key_a", "o", "operator", 5, 1)
    old = msgspec.json.encode(e)  # as the first activity log wrote them
    assert decode_event(old, "key_a", "o") == e
    assert decode_event(old, "key_b", "o") is None and decode_event(old, "key_a", "p") is None


def test_history_counts_round_trip_and_refuse_garbage():
    assert codec.encode_counts([1, 0, 22, 0, 3]) == "1:0:22:0:3"
    assert codec.decode_counts(b"1:0:22:0:3") == [1, 0, 22, 0, 3]
    assert codec.decode_counts("4:5") == [4, 5, 0, 0, 0]  # classes added later read as 0
    for bad in (None, b"", "1:x", "1:2:3:4:5:6", "-1:0", "1::2"):
        assert codec.decode_counts(bad) is None


def _raw(fields):
    return {str(k).encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in zip(fields[::2], fields[1::2], strict=True)}


def test_a_rolled_record_and_its_alias_round_trip():
    from gateway.model import Secret
    secrets = (Secret("key_B", "sop_BBBBBB", 20), Secret("key_A", "sop_AAAAAA", 10, 99))
    record = KeyRecord(id="key_A", org_id="acme", name="n", prefix="sop_BBBBBB", scopes=("tasks:read",),
                       digest="11" * 32, created_at=10, created_by="operator", version=2, secret_ends_at=99,
                       secrets=secrets, rolled_at=20)
    assert codec.decode_record("key_A", _raw(codec.encode_record(record))) == record
    alias = codec.decode_record("key_B", _raw(codec.encode_alias(record, "22" * 32)))
    # The key's id whichever secret was read, the alias's own digest, no secrets list.
    assert (alias.id, alias.alias_id, alias.digest, alias.secrets, alias.secret_ends_at) == (
        "key_A", "key_B", "22" * 32, (), None)
    assert (alias.scopes, alias.version, alias.rolled_at) == (record.scopes, 2, 20)
    assert codec.decode_secrets(codec.encode_secrets(secrets)) == secrets


def test_a_malformed_secrets_list_is_no_record():
    fields = _raw(codec.encode_record(KeyRecord(id="key_A", org_id="acme", name="n", prefix="sop_AAAAAA", scopes=(),
                                                digest="11" * 32, created_at=10, created_by="operator")))
    fields[b"A"] = b"key_B:sop_x"
    assert codec.decode_record("key_A", fields) is None


# -- limits (issue 16) --------------------------------------------------------------------------

def test_a_records_limits_round_trip_and_its_aliases_carry_them():
    from gateway.model import Secret
    from gateway.ratelimit import Limit
    limits = (Limit("second", 10), Limit("minute", 500), Limit("month", 100_000))
    record = make_record(limits=limits)
    raw = _raw(codec.encode_record(record))
    assert raw[b"L"] == b"second:10 minute:500 month:100000"
    assert codec.decode_record(record.id, raw) == record
    assert codec.decode_record(record.id, _raw(codec.encode_record(make_record()))).limits is None  # absent: default
    rolled = make_record(limits=limits, secrets=(Secret("key_B", "sop_BBBBBB", 20),), rolled_at=20)
    assert codec.decode_record("key_B", _raw(codec.encode_alias(rolled, "22" * 32))).limits == limits
    assert "L" in codec.SHARED


@pytest.mark.parametrize("text", [
    b"", b" ", b"minute", b"minute:", b"minute:0", b"minute:-1", b"minute:1e3", b"week:5", b"minute:5 minute:6",
    b"month:5 second:1", b"minute:5  hour:6", b"minute:\xd9\xa1", b"minute:1000000000000000", b"minute:5:6",
])
def test_a_malformed_limits_field_is_no_record(text):
    # SECURITY: fail closed: a key whose limits cannot be read is refused, never unlimited.
    raw = _raw(codec.encode_record(make_record()))
    raw[b"L"] = text
    assert codec.decode_record("key_0123456789ABCDEF", raw) is None
