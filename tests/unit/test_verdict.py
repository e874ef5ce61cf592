"""The one verification rule, gateway.model.verdict: pure, no event loop."""

from __future__ import annotations

import hashlib

import pytest

from gateway import errors
from gateway.model import KeyRecord, verdict

KEY = "sop_" + "a" * 36
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
NOW = 1_800_000_000_000


def record(**fields) -> KeyRecord:
    base = dict(id="key_0123456789abcdef", org_id="acme", name="ci", prefix="sop_aaaaaa", scopes=("tasks:read",),
                digest=DIGEST, created_at=NOW - 1000, created_by="operator")
    return KeyRecord(**{**base, **fields})


def test_a_genuine_active_key_is_its_record():
    active = record(expires_at=NOW + 1)
    assert verdict(active, DIGEST, NOW) is active


@pytest.mark.parametrize("found", [None, record(), record(revoked_at=NOW - 1), record(expires_at=NOW - 1)],
                         ids=["unknown", "other-key", "other-key-revoked", "other-key-expired"])
def test_an_unknown_or_other_key_is_invalid_whatever_the_record_says(found):
    other_digest = hashlib.sha256(b"sop_" + b"b" * 36).hexdigest() if found is not None else DIGEST
    with pytest.raises(errors.InvalidApiKey):
        verdict(found, other_digest, NOW)


def test_revoked_wins_over_expired():
    with pytest.raises(errors.RevokedApiKey):
        verdict(record(revoked_at=NOW - 5, expires_at=NOW - 10), DIGEST, NOW)


@pytest.mark.parametrize("expires_at, refused", [(NOW, True), (NOW - 1, True), (NOW + 1, False), (None, False)])
def test_expiry_is_at_expires_at_itself(expires_at, refused):
    if refused:
        with pytest.raises(errors.ExpiredApiKey):
            verdict(record(expires_at=expires_at), DIGEST, NOW)
    else:
        assert verdict(record(expires_at=expires_at), DIGEST, NOW).expires_at == expires_at


def test_the_verdict_agrees_with_the_record_status():
    for r in (record(), record(revoked_at=NOW), record(expires_at=NOW), record(expires_at=NOW + 1)):
        try:
            verdict(r, DIGEST, NOW)
            said = "active"
        except errors.RevokedApiKey:
            said = "revoked"
        except errors.ExpiredApiKey:
            said = "expired"
        assert said == r.status(NOW)


@pytest.mark.parametrize("ends_at, refused", [(NOW, True), (NOW - 1, True), (NOW + 1, False), (None, False)])
def test_a_rolled_secret_is_refused_from_its_end_on(ends_at, refused):
    if refused:
        with pytest.raises(errors.RolledApiKey) as err:
            verdict(record(secret_ends_at=ends_at), DIGEST, NOW)
        assert (err.value.status, err.value.code) == (401, "rolled_api_key")
    else:
        assert verdict(record(secret_ends_at=ends_at), DIGEST, NOW).secret_ends_at == ends_at


def test_a_rolled_secret_of_another_key_is_invalid_and_the_key_state_comes_first():
    with pytest.raises(errors.InvalidApiKey):
        verdict(record(secret_ends_at=NOW - 1), hashlib.sha256(b"other").hexdigest(), NOW)
    with pytest.raises(errors.RevokedApiKey):
        verdict(record(secret_ends_at=NOW - 1, revoked_at=NOW - 1), DIGEST, NOW)
    with pytest.raises(errors.ExpiredApiKey):
        verdict(record(secret_ends_at=NOW - 1, expires_at=NOW - 1), DIGEST, NOW)
