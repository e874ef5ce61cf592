"""Request and response bodies of the admin API (msgspec Structs; also the OpenAPI schemas)."""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from gateway.model import (EXPIRY_CHOICES, GRACE_CHOICES, KEY_ACTIONS, KEY_ID_PATTERN, ORG_ACTIONS, ORG_SETTINGS_LOG, KeyEvent,
                           KeyRecord, rfc3339)
from gateway.ratelimit import MAX_LIMIT, WINDOWS, Limit

ExpiresIn = Literal[tuple(EXPIRY_CHOICES)]
GracePeriod = Literal[tuple(GRACE_CHOICES)]

# What str.strip() trims (str.isspace), and what a name may never contain: controls (Cc), line and
# paragraph separators (Zl, Zp) and the bidi embeddings, overrides and isolates (Trojan Source).
# gateway.validation.key_name enforces this for the admin API and the CLI; NAME_PATTERN says the same
# thing in the OpenAPI document (tests/security/test_fuzz_properties.py checks that the two agree).
NAME_SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NAME_FORBIDDEN = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
NAME_PATTERN = (
    f"^[{NAME_SPACE}]*[^{NAME_SPACE}{NAME_FORBIDDEN}]"
    f"(?:[^{NAME_FORBIDDEN}]{{0,98}}[^{NAME_SPACE}{NAME_FORBIDDEN}])?[{NAME_SPACE}]*$"
)
Timestamp = Annotated[str, Meta(description="RFC 3339 UTC time", examples=["2026-11-26T17:52:59.123Z"],
                                 extra_json_schema={"format": "date-time"})]


Window = Literal[WINDOWS]


class LimitSpec(msgspec.Struct, forbid_unknown_fields=True):
    """One limit of a key: at most ``limit`` request units per UTC window (a route may cost more than 1)."""

    window: Annotated[Window, Meta(description="second, minute, hour (rates); day, month (quotas, UTC calendar)")]
    # int | float: JSON Schema's integer includes 5.0 (the document says integer; app._limits takes
    # an integral float as its integer and refuses any other).
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] | Annotated[float, Meta(ge=1, le=MAX_LIMIT)]


# At most one limit per window; null (or left out on create): the configured default applies.
Limits = Annotated[list[LimitSpec], Meta(min_length=1, max_length=len(WINDOWS), description=(
    "The key's own rate windows and quotas, one per window; null: the configured default applies"))]


class CreateKeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /v1/orgs/{org_id}/api-keys."""

    name: Annotated[str, Meta(
        description="1-100 characters after trimming, no control, line-separator or bidi-override characters",
        extra_json_schema={"pattern": NAME_PATTERN},  # documented only: key_name gives the clearer 400s
    )]
    scopes: Annotated[list[str], Meta(min_length=1, max_length=200, description="Known resource:action scopes")]
    expires_in: Annotated[ExpiresIn, Meta(description="When the key stops working")] = "never"
    limits: Limits | None = None


class RevokeKeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Optional body of POST /v1/orgs/{org_id}/api-keys/{key_id}/revoke (or ?cascade=true)."""

    cascade: Annotated[bool, Meta(description="Also revoke every key this key created, recursively")] = False


class RollKeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of POST /v1/orgs/{org_id}/api-keys/{key_id}/roll."""

    grace_period: Annotated[GracePeriod, Meta(
        description="How long the current secret keeps working (never past the key's expiry); "
                    "a secret still in an earlier roll's grace period stops at once")]


class EditKeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of PATCH /v1/orgs/{org_id}/api-keys/{key_id}: the fields to change (at least one)."""

    # UNSET, not None: a field is given or left out; null is refused (400 naming the field).
    name: Annotated[str, Meta(description="As on create", extra_json_schema={"pattern": NAME_PATTERN})] | UnsetType = UNSET
    scopes: Annotated[list[str], Meta(min_length=1, max_length=200, description=(
        "The whole new list; a removal is enforced by every gateway before the answer"))] | UnsetType = UNSET
    expires_in: Annotated[ExpiresIn, Meta(description="A choice counted from now (not with expires_at)")] | UnsetType = UNSET
    expires_at: Annotated[str, Meta(description="RFC 3339; only earlier than the current expiry, and in the future "
                                                "(not with expires_in)", extra_json_schema={"format": "date-time"})
                          ] | UnsetType = UNSET
    limits: Annotated[Limits | None, Meta(description=(
        "The whole new list, or null to clear it (the configured default applies); a lower limit is "
        "enforced by every gateway before the answer"))] | UnsetType = UNSET


class Secret(msgspec.Struct):
    """One live secret of a key (never the secret itself)."""

    prefix: str
    created_at: Timestamp
    expires_at: Annotated[Timestamp | None, Meta(
        description="When it stops working: the key's expiry for the current secret, the grace period's end "
                    "for the previous one")]


class LimitUsage(msgspec.Struct):
    """How much of one enforced limit the current window has used, and when the window resets."""

    window: Window
    limit: int
    used: Annotated[int, Meta(ge=0, description=(
        "Units leased to gateways in this window: includes budget a gateway holds but has not spent, "
        "which it gives back within seconds of going idle"))]
    resets_at: Timestamp


class LeakReport(msgspec.Struct):
    """A secret scanner reported one of the key's secrets public (docs/secret-scanning.md)."""

    url: Annotated[str, Meta(description="Where the scanner found it (e.g. a file at a commit on GitHub)")]
    source: Annotated[str, Meta(description="What the scanner looked at (GitHub: content, commit, pull_request, gist, ...)")]
    scanner: Annotated[str, Meta(description="Who reported it (github)")]
    action: Annotated[Literal["revoke", "flag"], Meta(description="What the org's leak_action did: revoked the key, or flagged it and left it active")]
    found_at: Timestamp


class ApiKey(msgspec.Struct):
    """An API key as the admin API shows it: never the secret, only its display prefix."""

    id: str
    org_id: str
    name: str
    prefix: Annotated[str, Meta(description="Type prefix + first random characters, enough to recognise the key")]
    scopes: list[str]
    status: Literal["active", "expired", "revoked"]
    created_at: Timestamp
    created_by: str
    expires_at: Timestamp | None
    last_used_at: Timestamp | None
    request_count: int
    revoked_at: Timestamp | None
    revoked_by: str | None
    version: Annotated[int, Meta(description="Bumped by every change; the ETag, and PATCH's If-Match")]
    secrets: Annotated[list[Secret], Meta(description="The live secrets, newest first")]
    rolled_at: Timestamp | None
    limits: Annotated[list[LimitSpec] | None, Meta(description="The key's own limits; null: the default applies")]
    effective_limits: Annotated[list[LimitSpec], Meta(description=(
        "What the gateways enforce: the key's own limits or the configured default, capped by the "
        "configured maximum; empty: unlimited"))]
    leak: Annotated[LeakReport | None, Meta(description="Set once a secret scanner reported the key public: where, and what was done")]


class RolledApiKey(ApiKey):
    """The roll response: the key, its new secret (shown once) and when the previous one stops."""

    key: Annotated[str, Meta(description="The new secret; shown once, store it now", pattern=r"^sop_[0-9A-Za-z]{36}$")]
    previous_secret_expires_at: Annotated[Timestamp, Meta(description="When the secret it replaces stops working")]


class CreatedApiKey(ApiKey):
    """The create response: the only time the full key is returned."""

    key: Annotated[str, Meta(description="The secret key; shown once, store it now", pattern=r"^sop_[0-9A-Za-z]{36}$")]


class RevokedApiKey(ApiKey):
    """The revoke response: the key, and every key the call revoked."""

    revoked_ids: Annotated[list[str], Meta(description="The key's id, then (with cascade) every key it created, "
                                                        "recursively, level by level; each refused by every gateway now")]


class ApiKeyList(msgspec.Struct):
    """A page of keys, newest first."""

    data: list[ApiKey]
    next_cursor: Annotated[str | None, Meta(description="Pass as ?cursor= for the next page; null on the last")]


class Caller(msgspec.Struct):
    """Who the credential belongs to (GET /v1/me): what the page needs to show the right actions."""

    actor: Annotated[str, Meta(description="Recorded in the audit trail: operator, key:<key_id> or user:<sub> <email>")]
    operator: Annotated[bool, Meta(description="An operator token: acts on any org and may grant any scope")]
    org_id: Annotated[str | None, Meta(description="The caller's org; null for operators")]
    scopes: Annotated[list[str], Meta(description="What the caller holds (a key: its scopes; a person: api_keys:manage and/or api_keys:read by role); empty for operators")]
    can_manage: Annotated[bool, Meta(description="May create, edit, roll and revoke keys")]
    grants_any: Annotated[bool, Meta(description="May grant any permission of the catalogue (operators and an org's admins), not only the scopes it holds")] = False


class Permission(msgspec.Struct):
    """One scope of the catalogue."""

    scope: str
    resource: str
    action: str
    label: str


class PermissionList(msgspec.Struct):
    data: list[Permission]


class OrgSettingsOut(msgspec.Struct):
    """An org's settings about its keys (GET/PATCH /v1/orgs/{org_id}/settings)."""

    org_id: str
    leak_action: Annotated[Literal["revoke", "flag"], Meta(description=(
        "A key a secret scanner reports public: revoked at once (revoke, the default) or flagged and left active (flag)"))]
    unused_days: Annotated[int, Meta(ge=1, le=3650, description="Days without a request after which api_key.unused is sent")]
    expire_unused_days: Annotated[Annotated[int, Meta(ge=1, le=3650)] | None, Meta(description=(
        "Keys without a request for this many days expire by themselves; null: never (the default)"))]


class OrgSettingsPatch(msgspec.Struct, forbid_unknown_fields=True):
    """The settings to change (any of them; at least one field is not required)."""

    leak_action: Literal["revoke", "flag"] | UnsetType = UNSET
    unused_days: Annotated[int, Meta(ge=1, le=3650)] | UnsetType = UNSET
    expire_unused_days: Annotated[int, Meta(ge=1, le=3650)] | None | UnsetType = UNSET


class AuditChange(msgspec.Struct):
    """One field's value before and after the change (never a secret: a roll shows display prefixes)."""

    before: Any
    after: Any


class AuditEvent(msgspec.Struct):
    """One create, edit, roll, revoke or leak of a key, or a change of the org's settings: who,
    when, and what changed."""

    id: Annotated[str, Meta(description="The event's id: <key_id>:<version>, or org_settings:<version> for a "
                                        "change of the org's settings",
                            pattern=rf"^(?:{KEY_ID_PATTERN}|{ORG_SETTINGS_LOG}):[0-9]+$")]
    action: Literal[KEY_ACTIONS + ORG_ACTIONS]
    key_id: Annotated[str | None, Meta(description="The key (null for a change of the org's settings)")]
    org_id: str
    actor: Annotated[str, Meta(description="operator, cli or key:<key_id>")]
    at: Timestamp
    version: Annotated[int, Meta(ge=1, description="The key's version after the change (its ETag); the settings' "
                                                   "own count of changes for org.settings_updated")]
    changes: Annotated[dict[str, AuditChange], Meta(
        description="field -> before/after: name, scopes, expires_at, limits (edits; limits: the list or null); secret (display prefixes), "
                    "previous_secret_expires_at (rolls); leak (leaks); leak_action, unused_days, expire_unused_days (org.settings_updated); "
                    "empty for creates and revokes")]


class AuditEventList(msgspec.Struct):
    """A page of the activity log, newest first."""

    data: list[AuditEvent]
    next_cursor: Annotated[str | None, Meta(description="Pass as ?cursor= for the next page; null on the last")]


# -- usage history (GET .../api-keys/{key_id}/usage) ----------------------------------------------
Count = Annotated[int, Meta(ge=0)]


class UsageCounts(msgspec.Struct):
    """Requests by outcome class: the status the client got; refused = refused by the gateway after
    the key was authenticated (403 insufficient scope, 404 no route, 405 wrong method, 429)."""

    ok: Count = msgspec.field(name="2xx")
    redirect: Count = msgspec.field(name="3xx")
    client_error: Count = msgspec.field(name="4xx")
    server_error: Count = msgspec.field(name="5xx")
    refused: Count = msgspec.field(name="refused")


class UsageBucket(msgspec.Struct):
    """One UTC hour or day: ``start`` and the counts of the requests in it."""

    start: Timestamp
    ok: Count = msgspec.field(name="2xx")
    redirect: Count = msgspec.field(name="3xx")
    client_error: Count = msgspec.field(name="4xx")
    server_error: Count = msgspec.field(name="5xx")
    refused: Count = msgspec.field(name="refused")


class KeyUsage(msgspec.Struct):
    """A key's usage history: contiguous buckets (zeros included) aligned to UTC hours or days."""

    key_id: str
    granularity: Literal["hour", "day"]
    from_: Timestamp = msgspec.field(name="from")
    to: Timestamp = msgspec.field(name="to")
    buckets: list[UsageBucket] = msgspec.field(default_factory=list)
    totals: UsageCounts = msgspec.field(default_factory=lambda: UsageCounts(0, 0, 0, 0, 0))


def usage_out(key_id: str, granularity: str, from_ms: int, to_ms: int,
              buckets: list[tuple[int, list[int]]], totals: list[int]) -> KeyUsage:
    return KeyUsage(key_id=key_id, granularity=granularity, from_=rfc3339(from_ms), to=rfc3339(to_ms),
                    buckets=[UsageBucket(rfc3339(start), *counts) for start, counts in buckets],
                    totals=UsageCounts(*totals))


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    request_id: str
    field: str | None = None
    required_scope: str | None = None
    unknown_scopes: list[str] | None = None
    scopes: list[str] | None = None
    limit: Annotated[int | None, Meta(description="key_limit_reached, too_many_creates: the limit")] = None
    max_expires_at: Annotated[str | None, Meta(description="expires_in too late: the creating key's own expiry")] = None
    allowed_expires_in: Annotated[list[str] | None, Meta(description="expires_in too late: the choices that fit")] = None
    max_buckets: Annotated[int | None, Meta(description="usage range too long: the most buckets per query")] = None
    current_version: Annotated[int | None, Meta(description="version_mismatch: the key's version now")] = None


class Error(msgspec.Struct):
    """Every error response."""

    error: ErrorDetail


class KeyDetail(ApiKey):
    """GET of one key: the key, and how much of each enforced limit its current window has used."""

    limit_usage: Annotated[list[LimitUsage] | None, Meta(description=(
        "One entry per effective limit; null when the store could not say (the rest of the key still is)"))]


# What a key's record sets -> what the gateways enforce (gateway.plans.LimitsConfig.effective).
Effective = Callable[[tuple[Limit, ...] | None], tuple[Limit, ...]]


def _no_config(limits: tuple[Limit, ...] | None) -> tuple[Limit, ...]:
    return limits or ()


def key_out(record: KeyRecord, now_ms: int, effective: Effective = _no_config) -> ApiKey:
    return ApiKey(**_fields(record, now_ms, effective))


def detail_out(record: KeyRecord, now_ms: int, effective: Effective,
               usage: list[tuple[Limit, int, int]] | None) -> KeyDetail:
    """``usage``: (limit, used, reset time in ms) per effective limit; None: unknown."""
    return KeyDetail(**_fields(record, now_ms, effective), limit_usage=None if usage is None else [
        LimitUsage(limit.window, limit.limit, used, rfc3339(resets)) for limit, used, resets in usage])


def created_out(record: KeyRecord, now_ms: int, secret: str, effective: Effective = _no_config) -> CreatedApiKey:
    return CreatedApiKey(**_fields(record, now_ms, effective), key=secret)


def revoked_out(record: KeyRecord, now_ms: int, revoked_ids: list[str],
                effective: Effective = _no_config) -> RevokedApiKey:
    return RevokedApiKey(**_fields(record, now_ms, effective), revoked_ids=revoked_ids)


def rolled_out(record: KeyRecord, now_ms: int, secret: str, previous_ends_at: int,
               effective: Effective = _no_config) -> RolledApiKey:
    return RolledApiKey(**_fields(record, now_ms, effective), key=secret,
                        previous_secret_expires_at=rfc3339(previous_ends_at))


def _specs(limits) -> list[LimitSpec]:
    return [LimitSpec(limit.window, limit.limit) for limit in limits]


def _secrets(r: KeyRecord, now_ms: int) -> list[Secret]:
    def end(ends_at: int | None) -> int | None:
        if ends_at is None or r.expires_at is None:
            return ends_at if r.expires_at is None else r.expires_at
        return min(ends_at, r.expires_at)
    return [Secret(s.prefix, rfc3339(s.created_at), rfc3339(end(s.ends_at))) for s in r.live_secrets(now_ms)]


def _fields(r: KeyRecord, now_ms: int, effective: Effective) -> dict:
    return dict(
        id=r.id, org_id=r.org_id, name=r.name, prefix=r.prefix, scopes=list(r.scopes),
        status=r.status(now_ms), created_at=rfc3339(r.created_at), created_by=r.created_by,
        expires_at=rfc3339(r.expires_at), last_used_at=rfc3339(r.last_used_at),
        request_count=r.request_count, revoked_at=rfc3339(r.revoked_at), revoked_by=r.revoked_by,
        version=r.version, secrets=_secrets(r, now_ms), rolled_at=rfc3339(r.rolled_at),
        limits=None if r.limits is None else _specs(r.limits), effective_limits=_specs(effective(r.limits)),
        leak=None if r.leak is None else LeakReport(r.leak.url, r.leak.source, r.leak.scanner, r.leak.action,
                                                     rfc3339(r.leak.at)),
    )


def audit_event_out(e: KeyEvent) -> AuditEvent:
    return AuditEvent(
        id=f"{e.key_id}:{e.version}", action=e.action, key_id=None if e.key_id == ORG_SETTINGS_LOG else e.key_id,
        org_id=e.org_id, actor=e.actor,
        at=rfc3339(e.at), version=e.version,
        changes={name: AuditChange(_out(c.before, name), _out(c.after, name)) for name, c in e.changes.items()},
    )


def _out(value: object, field: str) -> object:
    # Times are kept in ms (fields "*_at") and shown as RFC 3339, like every time of this API.
    return rfc3339(value) if field.endswith("_at") and isinstance(value, int) else value
