"""The key record's pure helpers: the cascade's tree walk."""

from __future__ import annotations

from gateway.model import KeyRecord, created_by_any

NOW = 1_764_000_000_000


def _rec(key_id: str, by: str) -> KeyRecord:
    return KeyRecord(key_id, "o", "n", "sop_x", ("tasks:read",), "00" * 32, NOW, by)


def test_created_by_any_finds_one_level_and_skips_the_creators():
    records = [_rec("key_a", "operator"), _rec("key_b", "key:key_a"), _rec("key_c", "key:key_b"),
               _rec("key_d", "key:key_a"), _rec("key_e", "key:key_x")]
    assert created_by_any(records, {"key_a"}) == ["key_b", "key_d"]
    assert created_by_any(records, {"key_a", "key_b", "key_d"}) == ["key_c"]
    assert created_by_any(records, {"key_c"}) == []
