"""The API key record shared by the gateway and the admin API, its status, the verification
rule (``verdict``) and time helpers.

Pure: times are integer milliseconds since the Unix epoch; status is computed at read time.
"""

from __future__ import annotations

import datetime as dt
import secrets

import msgspec

from gateway import errors
from gateway.ratelimit import Limit

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
HOUR_MS = 3_600_000
# How long a rolled key's previous secret keeps working (POST .../roll, `gateway keys roll`).
GRACE_CHOICES: dict[str, int] = {"now": 0, "1h": HOUR_MS, "24h": 24 * HOUR_MS, "7d": 7 * DAY_MS}
# A key has at most this many live secrets: the current one and, during a grace period, the one
# before it (a second roll ends the oldest at once).
LIVE_SECRETS = 2


class Secret(msgspec.Struct, frozen=True, array_like=True):
    """One secret of a key as its record lists it: the id derived from it, its display prefix,
    when it was made and when it stops working (None: when the key does)."""

    id: str
    prefix: str
    created_at: int
    ends_at: int | None = None

    def live(self, now_ms: int) -> bool:
        return self.ends_at is None or self.ends_at > now_ms


class Leak(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A secret scanner's report that the key is public (issue 17; gateway.leaks): where it was
    found, by whom, when (ms) and what was done (``revoke`` or ``flag``: left active, marked)."""

    url: str
    source: str
    at: int
    scanner: str
    action: str


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
    # The end of the presented secret (the one whose hash was read): None while it is current.
    secret_ends_at: int | None = None
    # The key's secrets, newest first, as a roll lists them (empty before the first roll, and on
    # an alias): ``key_secrets`` is the list in either case.
    secrets: tuple[Secret, ...] = ()
    rolled_at: int | None = None
    # Set when the hash read is an alias (a later secret's copy of the record): its own id.
    # ``id`` is always the key's public id, whichever secret was presented.
    alias_id: str | None = None
    # The key's own rate windows and quotas, shortest window first, at most one per window (never
    # empty); None: the configured default applies (gateway.plans.LimitsConfig.effective).
    limits: tuple[Limit, ...] | None = None
    # Set once a secret scanner reported one of the key's secrets public (the record only, never
    # an alias): the page shows "Revoked: leaked (found at <url>)" or a Leaked badge.
    leak: Leak | None = None

    def key_secrets(self) -> tuple[Secret, ...]:
        """The secrets, newest first: before the first roll, the record's own one."""
        if self.secrets or self.alias_id is not None:
            return self.secrets
        return (Secret(self.id, self.prefix, self.created_at, self.secret_ends_at),)

    def live_secrets(self, now_ms: int) -> list[Secret]:
        return [s for s in self.key_secrets() if s.live(now_ms)]

    def status(self, now_ms: int) -> str:
        """``revoked`` if revoked, else ``expired`` if expires_at <= now, else ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now_ms:
            return "expired"
        return "active"


def verdict(record: KeyRecord | None, digest: str, now_ms: int) -> KeyRecord:
    """The one verification rule: the record a presented key's ``digest`` authenticates, at ``now_ms``.

    Raises InvalidApiKey (no record, or another key's), then RevokedApiKey, ExpiredApiKey or
    RolledApiKey (the key is genuine: callers may log its ids). The key's state comes first: a
    rolled secret of a revoked or expired key says so, since its successor is refused as well. The gateway, forward-auth and the admin API all
    decide with this; the admin API answers its own code for an unknown key.
    """
    # SECURITY: the id only locates the record; the constant-time digest comparison authenticates.
    if record is None or not secrets.compare_digest(record.digest, digest):
        raise errors.InvalidApiKey()
    if record.revoked_at is not None:
        raise errors.RevokedApiKey()
    if record.expires_at is not None and record.expires_at <= now_ms:
        raise errors.ExpiredApiKey()
    # The key is live, but this secret of it was replaced by a roll and its grace period is over.
    if record.secret_ends_at is not None and record.secret_ends_at <= now_ms:
        raise errors.RolledApiKey()
    return record


# The actions of a key's activity log.
KEY_ACTIONS = ("api_key.created", "api_key.updated", "api_key.rolled", "api_key.revoked", "api_key.leaked")
# An org's settings changes share the org's activity log with key events: their index entries
# are "org_settings:<version>" (gateway.store.orgs).
ORG_SETTINGS_LOG = "org_settings"
SETTINGS_UPDATED = "org.settings_updated"
ORG_ACTIONS = (SETTINGS_UPDATED,)


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


def grace_end(choice: str, now_ms: int, expires_at: int | None) -> int:
    """When the secret a roll replaces stops working: ``choice`` from now, never after the key's
    own expiry (KeyError for unknown choices)."""
    end = now_ms + GRACE_CHOICES[choice]
    return end if expires_at is None else min(end, expires_at)


def rolled_secrets(record: KeyRecord, new: Secret, previous_ends_at: int, now_ms: int) -> tuple[Secret, ...]:
    """The secrets after a roll: ``new`` first, the current one ending at ``previous_ends_at``,
    any older one still in its grace period ending now, the ones already dead left out."""
    current, *older = record.live_secrets(now_ms)
    ended = [msgspec.structs.replace(current, ends_at=min(previous_ends_at, current.ends_at or previous_ends_at))]
    ended += [msgspec.structs.replace(s, ends_at=now_ms) for s in older]
    return (new, *ended)


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
