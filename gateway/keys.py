"""API key format: generate, parse and digest keys, derive their public id and display prefix.

Pure functions over strings; no I/O. Format: ``sop_`` + 30 base62 random + 6 base62 CRC32.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from typing import NamedTuple

TYPE_PREFIX = "sop_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LEN = 30  # 30 * log2(62) = 178.6 bits of randomness
CHECKSUM_LEN = 6  # 62**6 > 2**32, so any CRC32 fits
KEY_LEN = len(TYPE_PREFIX) + RANDOM_LEN + CHECKSUM_LEN
DISPLAY_RANDOM_CHARS = 6  # shown in the display prefix; 24 chars (142.9 bits) stay hidden

# Documented for secret scanners (README, "API keys": "Regex for secret scanners").
KEY_PATTERN = r"\bsop_[0-9A-Za-z]{36}\b"
KEY_REGEX = re.compile(KEY_PATTERN)
_EXACT = re.compile(r"sop_[0-9A-Za-z]{36}")
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


class InvalidKeyFormat(ValueError):
    """The string is not a well-formed key (prefix, length, alphabet or checksum)."""


class ParsedKey(NamedTuple):
    """A key that passed the format and checksum checks."""

    key_id: str  # public, stable id derived one-way from the secret
    digest: str  # SHA-256 hex of the full key: the only form that is stored
    prefix: str  # display prefix, e.g. "sop_AbC123"


_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]  # 3,844 two-digit strings: half the divmods
_PAIR_VALUES = {pair: value for value, pair in enumerate(_PAIRS)}


def base62(number: int, width: int) -> str:
    """Encode a non-negative integer as exactly ``width`` base62 characters."""
    parts = []
    for _ in range(width // 2):
        number, rem = divmod(number, 3844)
        parts.append(_PAIRS[rem])
    if width % 2:
        number, rem = divmod(number, 62)
        parts.append(ALPHABET[rem])
    if number:
        raise ValueError("number does not fit in width")
    return "".join(reversed(parts))


def checksum(body: str) -> str:
    """Base62 CRC32 over the prefix and random part."""
    return base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LEN)


def generate_key() -> str:
    """Return a new random key with a valid checksum."""
    body = TYPE_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LEN))
    return body + checksum(body)


def parse_key(key: str, memo: dict[str, str] | None = None) -> ParsedKey:
    """Check the format and checksum; return the id, digest and display prefix.

    Raises InvalidKeyFormat without saying which part failed (no oracle for guessers).
    ``memo``: digest -> key id of keys seen lately, the caller's own (a gateway process keeps
    one in its GatewayState): the id's base62 encoding costs more than the digest itself, and
    both are public-safe (neither lets anyone authenticate); never the key itself. At most
    IDS_MAX entries (cleared when full).
    """
    if len(key) != KEY_LEN or not key.isascii():
        raise InvalidKeyFormat("malformed key")
    raw = key.encode("ascii")
    digest = hashlib.sha256(raw).hexdigest()
    key_id = memo.get(digest) if memo is not None else None
    if key_id is None:
        # Not seen lately: the full format check. (A digest in the memo is that of a key that
        # passed it: the same key, SHA-256 being collision-resistant.)
        if not _EXACT.fullmatch(key):
            raise InvalidKeyFormat("malformed key")
        body, check = key[:-CHECKSUM_LEN], key[-CHECKSUM_LEN:]
        # The checksum read as a number (cheaper than encoding the CRC; it is public, no timing concern).
        if (_PAIR_VALUES[check[:2]] * 3844 + _PAIR_VALUES[check[2:4]]) * 3844 + _PAIR_VALUES[check[4:]] \
                != zlib.crc32(body.encode("ascii")):
            raise InvalidKeyFormat("malformed key")
        key_id = key_id_for(raw)
        if memo is not None:
            if len(memo) >= IDS_MAX:
                memo.clear()
            memo[digest] = key_id
    return ParsedKey(key_id=key_id, digest=digest, prefix=key[: len(TYPE_PREFIX) + DISPLAY_RANDOM_CHARS])


IDS_MAX = 65536  # entries of a parse_key memo


def key_id_for(raw_key: bytes) -> str:
    """Public key id: ``key_`` + 16 base62 chars of a domain-separated SHA-256 of the key.

    SECURITY: one-way and distinct from the stored digest; it lets verification find the
    record in one Redis read without any digest -> id index. Leaking it reveals nothing
    usable: guessing a key still means searching 178 bits.
    """
    h = int.from_bytes(hashlib.sha256(b"sop-key-id:" + raw_key).digest()[:12], "big")
    return "key_" + base62(h % 62**16, 16)


def looks_like_key(value: str) -> bool:
    """True if ``value`` contains something shaped like a key (used to refuse keys in URLs)."""
    return KEY_REGEX.search(value) is not None


def holds_key_shape(value: str) -> bool:
    """True if ``value`` holds ``sop_`` + 36 base62 anywhere, even with no word boundary around it."""
    # For refusing keys in URL paths ("foo-sop_...", "xsop_...1"): over-reporting is the safe side.
    return TYPE_PREFIX in value and _EXACT.search(value) is not None
