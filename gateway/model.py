"""The API key record shared by the gateway and the admin API, its status, the verification
rule (``verdict``) and time helpers.

Pure: times are integer milliseconds since the Unix epoch; status is computed at read time.
"""

from __future__ import annotations

import datetime as dt
import secrets

import msgspec

from gateway import errors

DAY_MS = 86_400_000
# The one definition of the expires_in choices and of the id shapes: gateway.validation, the CLI,
# the admin API's schemas and OpenAPI document and the store's cursors take them from here (the
# page's copies in admin_api/static are checked against them by tests/unit/test_model.py).
ORG_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # regex, unanchored: use fullmatch or add ^...$
KEY_ID_PATTERN = r"key_[0-9A-Za-z]{1,60}"
EXPIRY_CHOICES: dict[str, int | None] = {
    "never": None,
    "30d": 30 * DAY_MS,
    "90d": 90 * DAY_MS,
    "1y": 365 * DAY_MS,
}


class KeyRecord(msgspec.Struct, frozen=True):
    """One API key as stored; never holds the secret, only its SHA-256 digest."""

    id: str
    org_id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    digest: str
    created_at: int
    created_by: str
    expires_at: int | None = None
    last_used_at: int | None = None
    request_count: int = 0
    revoked_at: int | None = None
    revoked_by: str | None = None
    # Bumped by every change of the record, in the script that makes it (create writes 1; records
    # written before versions existed read as 0): the admin API's ETag, and the number of the
    # activity-log event (KeyEvent.version) that describes the change.
    version: int = 0

    def status(self, now_ms: int) -> str:
        """``revoked`` if revoked, else ``expired`` if expires_at <= now, else ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now_ms:
            return "expired"
        return "active"


def verdict(record: KeyRecord | None, digest: str, now_ms: int) -> KeyRecord:
    """The one verification rule: the record a presented key's ``digest`` authenticates, at ``now_ms``.

    Raises InvalidApiKey (no record, or another key's), then RevokedApiKey or ExpiredApiKey (the
    key is genuine: callers may log its ids). The gateway, forward-auth and the admin API all
    decide with this; the admin API answers its own code for an unknown key.
    """
    # SECURITY: the id only locates the record; the constant-time digest comparison authenticates.
    if record is None or not secrets.compare_digest(record.digest, digest):
        raise errors.InvalidApiKey()
    if record.revoked_at is not None:
        raise errors.RevokedApiKey()
    if record.expires_at is not None and record.expires_at <= now_ms:
        raise errors.ExpiredApiKey()
    return record


# The actions of a key's activity log.
KEY_ACTIONS = ("api_key.created", "api_key.updated", "api_key.rolled", "api_key.revoked")


class Change(msgspec.Struct, frozen=True, array_like=True):
    """One field's value before and after a change (names, scopes, times: never a secret)."""

    before: object
    after: object


class KeyEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """One change of a key as its activity log keeps it (gateway.store.codec.encode_event).

    ``version`` is the record's version after the change: (key_id, version) names the event.
    ``changes`` maps a field ("name", "scopes", "expires_at", "secret" (the display prefixes),
    "previous_secret_expires_at", ...) to its before/after values.
    """

    action: str
    key_id: str
    org_id: str
    actor: str
    at: int
    version: int
    changes: dict[str, Change] = {}


def created_by_any(records: list[KeyRecord], creator_ids: set[str]) -> list[str]:
    """The ids of ``records`` created by one of the keys ``creator_ids`` (``created_by`` is
    "key:<id>" for a key created by an org key), those keys themselves left out."""
    creators = {f"key:{key_id}" for key_id in creator_ids}
    return [r.id for r in records if r.created_by in creators and r.id not in creator_ids]


def expires_at_for(choice: str, now_ms: int) -> int | None:
    """Absolute expiry for an ``expires_in`` choice (KeyError for unknown choices)."""
    period = EXPIRY_CHOICES[choice]
    return None if period is None else now_ms + period


def rfc3339(ms: int | None) -> str | None:
    """Milliseconds since the epoch -> ``2026-11-26T17:52:59.123Z`` (None stays None)."""
    if ms is None:
        return None
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
