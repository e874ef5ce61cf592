"""Signed identity headers: the canonical string, the HMAC-SHA256 signature, the secrets setting (pure).

Backends check the signature with the stdlib-only `gateway_verify` module at the repository root,
which holds its own copy of `canonical_string` (a unit test proves the two agree).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urlsplit

from gateway.headers import Identity

VERSION = "v1"
SIGNATURE_HEADER = "X-Gateway-Signature"
KEY_ID_HEADER = "X-Gateway-Signature-Key-Id"
TIMESTAMP_HEADER = "X-Gateway-Timestamp"
MIN_SECRET_BYTES = 32

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# A secret is printable ASCII without spaces (and without ",", the entry separator), so the
# bytes that key the HMAC are the same in every language: the secret's ASCII characters.
_SECRET = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_BREAKS_LINE = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class SigningSecret:
    """One configured secret and the key id that names it in ``X-Gateway-Signature-Key-Id``."""

    kid: str
    secret: bytes = field(repr=False)


def parse_secrets(value: str | Iterable[str]) -> tuple[SigningSecret, ...]:
    """Parse ``kid1:secret1,kid2:secret2`` (or its comma-split entries); the first one signs.

    Raises ValueError naming the entry or key id at fault, never repeating a secret.
    """
    entries = value.split(",") if isinstance(value, str) else list(value)
    parsed: list[SigningSecret] = []
    for number, entry in enumerate((e.strip() for e in entries), start=1):
        if not entry:
            continue
        kid, sep, secret = entry.partition(":")
        # SECURITY: the messages name the entry by position and key id only: an entry without
        # ":" may well be a bare secret, and it must not end up in a log.
        if not sep:
            raise ValueError(f"entry {number} is not KEY_ID:SECRET")
        if not _KEY_ID.fullmatch(kid):
            raise ValueError(f"entry {number}: the key id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        if any(s.kid == kid for s in parsed):
            raise ValueError(f"key id {kid!r} appears twice")
        size = len(secret.encode("utf-8"))
        if size < MIN_SECRET_BYTES:
            raise ValueError(f"the secret of key id {kid!r} has {size} bytes; at least {MIN_SECRET_BYTES} are needed")
        if not _SECRET.fullmatch(secret):
            raise ValueError(f"the secret of key id {kid!r} must be printable ASCII without spaces or commas")
        parsed.append(SigningSecret(kid, secret.encode("ascii")))
    if not parsed:
        raise ValueError("no KEY_ID:SECRET entry")
    return tuple(parsed)


def canonical_string(
    *, kid: str, timestamp: int, method: str, target: str, org_id: str, key_id: str, scopes: str, request_id: str
) -> str:
    """The signed text: ``v1`` and eight fields, one per line, in this order, no trailing newline.

    ``target`` is the path as forwarded plus ``?query`` when the query is not empty; ``scopes``
    is the X-Api-Key-Scopes value (space-separated). Public routes use "" for org, key and scopes.
    Raises ValueError if a field contains CR, LF or NUL (the string would be ambiguous).
    """
    fields = (kid, str(timestamp), method, target, org_id, key_id, scopes, request_id)
    for value in fields:
        if _BREAKS_LINE.search(value):
            raise ValueError("refusing to sign a field that contains CR, LF or NUL")
    return "\n".join((VERSION, *fields))


def signature(secret: bytes, canonical: str) -> str:
    """``v1=`` and the lower-case hex HMAC-SHA256 of the UTF-8 canonical string."""
    return f"{VERSION}=" + hmac.new(secret, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def sign(
    secret: SigningSecret, *, timestamp: int, method: str, target: str, org_id: str, key_id: str, scopes: str,
    request_id: str,
) -> list[tuple[str, str]]:
    """The three headers to inject: signature, signing key id, timestamp."""
    canonical = canonical_string(
        kid=secret.kid, timestamp=timestamp, method=method, target=target, org_id=org_id, key_id=key_id,
        scopes=scopes, request_id=request_id,
    )
    return [
        (SIGNATURE_HEADER, signature(secret.secret, canonical)),
        (KEY_ID_HEADER, secret.kid),
        (TIMESTAMP_HEADER, str(timestamp)),
    ]


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs each forwarded request with the first configured secret.

    ``path_prefix`` is the path of ``--upstream`` (without a trailing "/"), which the backend
    sees in front of the canonical path.
    """

    secret: SigningSecret
    path_prefix: str = ""

    def headers(
        self, *, now: float, method: str, path: str, query: str, identity: Identity | None, request_id: str
    ) -> list[tuple[str, str]]:
        """The signature headers for one forwarded request (``identity`` None on public routes)."""
        target = self.path_prefix + path + ("?" + query if query else "")
        return sign(
            self.secret, timestamp=int(now), method=method, target=target,
            org_id=identity.org_id if identity else "", key_id=identity.key_id if identity else "",
            scopes=" ".join(identity.scopes) if identity else "", request_id=request_id,
        )


def make_signer(secrets: str | Iterable[str], upstream: str) -> Signer | None:
    """A Signer for the ``--signing-secrets`` setting and the ``--upstream`` URL; None when unset."""
    if not secrets:
        return None
    return Signer(parse_secrets(secrets)[0], urlsplit(upstream).path.rstrip("/"))
