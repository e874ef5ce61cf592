"""Key events (issue 17): payloads and org settings, pure."""

from __future__ import annotations

import msgspec
import pytest

from gateway.events import EVENT_TYPES, FeedEntry, change_id, change_payload, payload
from gateway.model import Change, KeyEvent
from gateway.orgsettings import DEFAULT_SETTINGS, OrgSettings, decode_settings, encode_settings
from gateway.store.events import decode_entry, encode_entry, found_entry


def test_a_change_payload_names_the_key_and_what_changed_never_a_secret():
    event = KeyEvent("api_key.updated", "key_a", "org_a", "usr_1", 1_764_000_000_123, 3,
                     {"name": Change("old", "new")})
    body = change_payload(event, {"name": "new", "prefix": "sop_AbC123"})
    assert body == {"type": "api_key.updated", "timestamp": "2025-11-24T16:00:00.123Z",
                    "data": {"key_id": "key_a", "org_id": "org_a", "actor": "usr_1", "version": 3,
                             "changes": {"name": {"before": "old", "after": "new"}},
                             "key": {"name": "new", "prefix": "sop_AbC123"}}}
    assert "key" not in change_payload(event)["data"]
    assert payload("webhook.test", 0, {})["timestamp"] == "1970-01-01T00:00:00.000Z"


def test_event_ids_are_stable_per_change():
    assert change_id("key_a", 3) == change_id("key_a", 3) != change_id("key_a", 4)
    assert len(set(EVENT_TYPES)) == len(EVENT_TYPES) == 8


def test_feed_entries_round_trip_and_foreign_ones_are_skipped():
    change = FeedEntry(change_id("key_a", 2), "org_a", 5, key_id="key_a", version=2)
    found = found_entry("evt_key_a_expiring_7d_99", "org_a", 6, "api_key.expiring", "key_a", {"days_left": 7})
    for entry in (change, found):
        assert decode_entry(encode_entry(entry)) == entry
    assert found.data == {"key_id": "key_a", "days_left": 7} and found.type == "api_key.expiring"
    for bad in (b"", b"{}", b"[1]", b'{"id": 1}', b"not json"):
        assert decode_entry(bad) is None


def test_org_settings_default_round_trip_and_refuse_what_they_cannot_be():
    assert decode_settings(None) == DEFAULT_SETTINGS == OrgSettings("revoke", 30, None)
    mine = OrgSettings("flag", 90, 365)
    assert decode_settings(encode_settings(mine)) == mine
    for bad in ({"leak_action": "delete"}, {"unused_days": 0}, {"expire_unused_days": 5000}, {"other": 1}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, OrgSettings)
    with pytest.raises(ValueError):
        decode_settings(b'{"leak_action": "nuke"}')  # never silently the defaults
