"""How the store encodes what it writes: key records, usage values and list cursors.

Pure: no Redis here. A record is a hash with one-letter field names, integers as integers and
the digest as its 32 raw bytes, so Redis keeps it in one small listpack (about 180 bytes for a
typical key, well inside the default ``hash-max-listpack-value`` of 64 bytes per value).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import msgspec

from gateway.model import KEY_ID_PATTERN, ORG_SETTINGS_LOG, Change, KeyEvent, KeyRecord, Leak, Secret
from gateway.ratelimit import WINDOWS, Limit

# Record fields. The key id is not stored: it is in the Redis key's name.
ORG, NAME, PREFIX, SCOPES, DIGEST = "o", "n", "p", "s", "d"
CREATED_AT, CREATED_BY, EXPIRES_AT, REVOKED_AT, REVOKED_BY = "c", "C", "e", "r", "R"
VERSION = "v"
# Rolls. Each hash (the record, and the alias of every later secret) has its own digest and the
# end of its own secret (g, ms; absent: live). An alias names its record (a) and holds a copy of
# the record's SHARED fields, so a cache miss is one HGETALL whichever secret is presented. The
# record alone lists the secrets (A: "id:prefix:created_at:ends_at" newest first, ends_at empty
# while current) and when the key was last rolled (y).
SECRET_ENDS_AT, ALIAS_OF, SECRETS, ROLLED_AT = "g", "a", "A", "y"
# The key's own limits (L: "window:limit ..." shortest window first; absent: the default applies)
# are shared, so every secret of a rolled key is held to them.
LIMITS = "L"
# A secret scanner's leak report (k: gateway.model.Leak as JSON), on the record only (not shared).
LEAK = "k"
SHARED = (ORG, NAME, PREFIX, SCOPES, CREATED_AT, CREATED_BY, EXPIRES_AT, REVOKED_AT, REVOKED_BY, VERSION, ROLLED_AT,
          LIMITS)

# The field of a node's usage hash holding the sequence number of the latest write set into it.
SEQ_FIELD = "~"


def encode_record(record: KeyRecord) -> list[Any]:
    """The record as HSET arguments: field, value, field, value, ..."""
    fields = shared_fields(record) + [DIGEST, bytes.fromhex(record.digest)]
    if record.secret_ends_at is not None:
        fields += [SECRET_ENDS_AT, record.secret_ends_at]
    if record.rolled_at is not None:
        fields += [SECRETS, encode_secrets(record.secrets)]
    if record.leak is not None:
        fields += [LEAK, encode_leak(record.leak)]
    return fields


_LEAK_ENCODER = msgspec.json.Encoder()
_LEAK_DECODER = msgspec.json.Decoder(Leak)


def encode_leak(leak: Leak) -> bytes:
    return _LEAK_ENCODER.encode(leak)


def decode_leak(raw: bytes) -> Leak:
    """ValueError for anything encode_leak does not write."""
    try:
        return _LEAK_DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise ValueError("malformed leak mark") from err


def shared_fields(record: KeyRecord) -> list[Any]:
    """The fields a record and its aliases hold alike (HSET arguments; SHARED names them all)."""
    fields: list[Any] = [
        ORG, record.org_id, NAME, record.name, PREFIX, record.prefix, SCOPES, " ".join(record.scopes),
        CREATED_AT, record.created_at, CREATED_BY, record.created_by,
    ]
    if record.version:
        fields += [VERSION, record.version]
    if record.expires_at is not None:
        fields += [EXPIRES_AT, record.expires_at]
    if record.revoked_at is not None:
        fields += [REVOKED_AT, record.revoked_at, REVOKED_BY, record.revoked_by or ""]
    if record.rolled_at is not None:
        fields += [ROLLED_AT, record.rolled_at]
    if record.limits is not None:
        fields += [LIMITS, encode_limits(record.limits)]
    return fields


def encode_alias(record: KeyRecord, digest: str) -> list[Any]:
    """The hash of a later secret of ``record`` (its own ``digest``): the shared fields and the
    record's id, never the secrets list."""
    return shared_fields(record) + [DIGEST, bytes.fromhex(digest), ALIAS_OF, record.id]


def encode_secrets(secrets: Iterable[Secret]) -> str:
    return " ".join(f"{s.id}:{s.prefix}:{s.created_at}:{'' if s.ends_at is None else s.ends_at}" for s in secrets)


def decode_secrets(text: str) -> tuple[Secret, ...]:
    """ValueError for anything encode_secrets does not write."""
    out = []
    for entry in text.split():
        key_id, prefix, created_at, ends_at = entry.split(":")
        out.append(Secret(key_id, prefix, int(created_at), int(ends_at) if ends_at else None))
    return tuple(out)


def encode_limits(limits: Iterable[Limit]) -> str:
    """``second:10 month:100000``: shortest window first."""
    return " ".join(f"{limit.window}:{limit.limit}" for limit in sorted(limits, key=lambda x: WINDOWS.index(x.window)))


def decode_limits(text: str) -> tuple[Limit, ...]:
    """ValueError for anything encode_limits does not write (an unknown window, a limit out of
    range, a window twice, nothing at all)."""
    out: list[Limit] = []
    for entry in text.split(" "):
        window, limit = entry.split(":")
        if not limit.isascii() or not limit.isdigit() or any(x.window == window for x in out):
            raise ValueError(f"malformed limits {text!r}")
        out.append(Limit(window, int(limit)))
    if [x.window for x in out] != sorted((x.window for x in out), key=WINDOWS.index):
        raise ValueError(f"limits out of order {text!r}")
    return tuple(out)


def decode_record(key_id: str, raw: dict[Any, Any] | list[Any]) -> KeyRecord | None:
    """A record read back with HGETALL (a dict, or a flat list from Lua); None if it is no record."""
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    if not raw:
        return None
    h = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    try:
        digest = h[DIGEST]
        if len(digest) != 32:
            return None
        revoked_at = h.get(REVOKED_AT)
        expires_at = h.get(EXPIRES_AT)
        ends_at = h.get(SECRET_ENDS_AT)
        rolled_at = h.get(ROLLED_AT)
        alias_of = h[ALIAS_OF].decode() if ALIAS_OF in h else None
        # Only a rolled record lists its secrets (KeyRecord.key_secrets: the record's own before).
        secrets = decode_secrets(h[SECRETS].decode()) if SECRETS in h and alias_of is None else ()
        # SECURITY: a malformed L is no key at all (never "no limits"): fail closed.
        limits = decode_limits(h[LIMITS].decode()) if LIMITS in h else None
        leak = decode_leak(h[LEAK]) if LEAK in h and alias_of is None else None
        return KeyRecord(
            id=alias_of or key_id,
            org_id=h[ORG].decode(),
            name=h[NAME].decode(),
            prefix=h[PREFIX].decode(),
            scopes=tuple(h[SCOPES].decode().split()),
            digest=digest.hex(),
            created_at=int(h[CREATED_AT]),
            created_by=h[CREATED_BY].decode(),
            expires_at=None if expires_at is None else int(expires_at),
            revoked_at=None if revoked_at is None else int(revoked_at),
            revoked_by=h[REVOKED_BY].decode() if REVOKED_BY in h else None,
            version=int(h.get(VERSION, 0)),
            secret_ends_at=None if ends_at is None else int(ends_at),
            secrets=secrets,
            rolled_at=None if rolled_at is None else int(rolled_at),
            alias_id=None if alias_of is None else key_id,
            limits=limits,
            leak=leak,
        )
    except (KeyError, ValueError, AttributeError, UnicodeDecodeError):
        return None  # a half-written or foreign hash is never treated as a key


# -- activity log ------------------------------------------------------------------------------
# A key's events are a Redis list in the record's own hash slot, appended by the same script as
# the change they describe; each element is one KeyEvent as JSON without its key id (the list's
# name holds it) and its org id (the record holds it): the reader passes both back in.


class _StoredEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """A KeyEvent as its key's log keeps it. ``key_id``/``org_id`` are never written; events
    written before they were dropped carry them, and must then name the caller's key and org."""

    action: str
    actor: str
    at: int
    version: int
    changes: dict[str, Change] = {}
    key_id: str | None = None
    org_id: str | None = None


_EVENT_ENCODER = msgspec.json.Encoder()
_EVENT_DECODER = msgspec.json.Decoder(_StoredEvent)


def encode_event(event: KeyEvent) -> bytes:
    return _EVENT_ENCODER.encode(_StoredEvent(event.action, event.actor, event.at, event.version, event.changes))


def decode_event(raw: bytes | str, key_id: str, org_id: str) -> KeyEvent | None:
    """An event of the log of ``key_id``, a key of ``org_id``, read back; None for anything that
    is not one, or names another key or org (never raises)."""
    try:
        e = _EVENT_DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if e.key_id not in (None, key_id) or e.org_id not in (None, org_id):
        return None
    return KeyEvent(e.action, key_id, org_id, e.actor, e.at, e.version, e.changes)


# -- usage -------------------------------------------------------------------------------------

def encode_usage(last_ms: int, count: int) -> str:
    """A node's absolute totals for one key: ``"<last used ms>:<request count>"``."""
    return f"{last_ms}:{count}"


def decode_usage(raw: bytes | str | None) -> tuple[int, int] | None:
    """Parse ``encode_usage`` output; None for a missing or malformed value."""
    if not raw:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    last, sep, count = text.partition(":")
    try:
        return (int(last), int(count)) if sep else None
    except ValueError:
        return None


def merge_usage(values: Iterable[tuple[int, int] | None]) -> tuple[int | None, int]:
    """last_used_at = the latest of all, request_count = the sum (None: never used)."""
    last: int | None = None
    count = 0
    for value in values:
        if value is None:
            continue
        if last is None or value[0] > last:
            last = value[0]
        count += value[1]
    return last, count


def usage_bucket(key_id: str) -> tuple[str, str]:
    """(bucket, field) of a key in the folded usage base; the Lua scripts compute the same.

    Key ids are "key_" + 16 base62 digits of a hash; the last ones are uniform, so the last two
    and two bits of the one before spread keys over 15,376 small hashes: up to about two million
    used keys each bucket stays under the 128 entries of a listpack (about 40 bytes a key, where
    one big hash table takes about 105).
    """
    if len(key_id) == 20 and key_id.startswith("key_"):
        return key_id[18:] + str(ord(key_id[17]) % 4), key_id[4:18]
    return "_", key_id


# -- list cursors ------------------------------------------------------------------------------
# Plain text, so that the OpenAPI document can give the exact pattern the server accepts: the
# position of the last entry of a page (its index score, then its member). Nothing secret: both
# are in the page that handed the cursor out. The activity log's member is the event's id,
# "<key_id>:<version>".

CURSOR_PATTERN = rf"^[0-9]{{1,15}}\.{KEY_ID_PATTERN}$"
AUDIT_CURSOR_PATTERN = rf"^[0-9]{{1,15}}\.(?:{KEY_ID_PATTERN}|{ORG_SETTINGS_LOG}):[0-9]{{1,10}}$"
_CURSOR = re.compile(CURSOR_PATTERN[1:-1])
_AUDIT_CURSOR = re.compile(AUDIT_CURSOR_PATTERN[1:-1])


def encode_cursor(score: int, key_id: str) -> str:
    return f"{score}.{key_id}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Parse a list cursor; ValueError unless it matches CURSOR_PATTERN."""
    if not _CURSOR.fullmatch(cursor):
        raise ValueError("invalid cursor")
    score, key_id = cursor.split(".", 1)
    return int(score), key_id


def event_id(key_id: str, version: int) -> str:
    """An event's id, and its member in the org's activity index: ``"<key_id>:<version>"``."""
    return f"{key_id}:{version}"


def parse_event_id(member: bytes | str) -> tuple[str, int] | None:
    """(key_id, version) of an activity index member; None for anything else."""
    text = member.decode() if isinstance(member, bytes) else member
    key_id, sep, version = text.rpartition(":")
    if not sep or not version.isascii() or not version.isdigit():
        return None
    return key_id, int(version)


def encode_audit_cursor(at: int, key_id: str, version: int) -> str:
    return f"{at}.{event_id(key_id, version)}"


def decode_audit_cursor(cursor: str) -> tuple[int, str, int]:
    """Parse an activity-log cursor: (the event's time in ms, its key id, its version);
    ValueError unless it matches AUDIT_CURSOR_PATTERN."""
    if not _AUDIT_CURSOR.fullmatch(cursor):
        raise ValueError("invalid cursor")
    at, member = cursor.split(".", 1)
    key_id, version = member.split(":")
    return int(at), key_id, int(version)


# -- usage history -----------------------------------------------------------------------------
# One bucket's counts per outcome class (gateway.usage.CLASSES order) as one hash value,
# "<2xx>:<3xx>:<4xx>:<5xx>:<refused>": one field per bucket keeps a key's day of hours at 24
# fields (a listpack), whatever the mix of classes.

def encode_counts(counts: Iterable[int]) -> str:
    return ":".join(map(str, counts))


def decode_counts(raw: bytes | str | None, width: int = 5) -> list[int] | None:
    """Parse ``encode_counts`` output (missing classes are 0); None for a missing or malformed value."""
    if not raw:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    parts = text.split(":")
    if len(parts) > width or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts] + [0] * (width - len(parts))
