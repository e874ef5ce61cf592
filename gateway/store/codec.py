"""How the store encodes what it writes: key records, usage values and list cursors.

Pure: no Redis here. A record is a hash with one-letter field names, integers as integers and
the digest as its 32 raw bytes, so Redis keeps it in one small listpack (about 180 bytes for a
typical key, well inside the default ``hash-max-listpack-value`` of 64 bytes per value).
"""

from __future__ import annotations

import base64
from typing import Any, Iterable

from gateway.model import KeyRecord

# Record fields. The key id is not stored: it is in the Redis key's name.
ORG, NAME, PREFIX, SCOPES, DIGEST = "o", "n", "p", "s", "d"
CREATED_AT, CREATED_BY, EXPIRES_AT, REVOKED_AT, REVOKED_BY = "c", "C", "e", "r", "R"

# The field of a node's usage hash holding the sequence number of the write that set it.
SEQ_FIELD = "~"


def encode_record(record: KeyRecord) -> list[Any]:
    """The record as HSET arguments: field, value, field, value, ..."""
    fields: list[Any] = [
        ORG, record.org_id, NAME, record.name, PREFIX, record.prefix, SCOPES, " ".join(record.scopes),
        DIGEST, bytes.fromhex(record.digest), CREATED_AT, record.created_at, CREATED_BY, record.created_by,
    ]
    if record.expires_at is not None:
        fields += [EXPIRES_AT, record.expires_at]
    if record.revoked_at is not None:
        fields += [REVOKED_AT, record.revoked_at, REVOKED_BY, record.revoked_by or ""]
    return fields


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
        return KeyRecord(
            id=key_id,
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
        )
    except (KeyError, ValueError, AttributeError, UnicodeDecodeError):
        return None  # a half-written or foreign hash is never treated as a key


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

def encode_cursor(score: int, key_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score}:{key_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Parse a list cursor; ValueError when it was not made by this store."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, key_id = raw.split(":", 1)
        if not key_id.startswith("key_"):
            raise ValueError
        return int(score), key_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("invalid cursor") from exc
