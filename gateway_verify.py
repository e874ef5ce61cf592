"""Check the identity headers signed by the API-key gateway (stdlib only: import it or vendor it).

    from gateway_verify import SignatureError, parse_secrets, verify_request
    SECRETS = parse_secrets(os.environ["GATEWAY_SIGNING_SECRETS"])     # "kid1:secret1,kid2:secret2"
    identity = verify_request(request.method, request.raw_path, request.headers, SECRETS)

Errors (each has a stable ``code``)::

    SignatureError                      the request is not a fresh, authentic gateway request
    ├── MissingSignature                no X-Gateway-Signature / -Key-Id / X-Gateway-Timestamp
    ├── MalformedSignature              a header is repeated or badly formed; a field has CR/LF/NUL
    ├── UnknownKeyId                    the signing key id is not among ``secrets``
    ├── BadSignature                    the HMAC does not match: a field was changed, or a wrong secret
    ├── ExpiredSignature                the timestamp is more than ``max_age`` seconds old
    └── FutureSignature                 the timestamp is more than ``max_age`` seconds ahead

The algorithm is described in the gateway's docs/signing.md ("Signed identity headers").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

__all__ = [
    "BadSignature", "ExpiredSignature", "FutureSignature", "Identity", "MalformedSignature",
    "MissingSignature", "SignatureError", "UnknownKeyId", "canonical_string", "parse_secrets", "verify_request",
]

VERSION = "v1"
MIN_SECRET_BYTES = 32

_SIGNATURE = re.compile(r"v1=([0-9a-f]{64})")
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SECRET = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,14}")
_BREAKS_LINE = re.compile(r"[\r\n\x00]")

# folded header name -> field
_HEADERS = {
    "x-gateway-signature": "signature",
    "x-gateway-signature-key-id": "kid",
    "x-gateway-timestamp": "timestamp",
    "x-org-id": "org_id",
    "x-api-key-id": "key_id",
    "x-api-key-scopes": "scopes",
    "x-request-id": "request_id",
}

Secrets = Union[Mapping[str, Union[str, bytes]], str]
Headers = Union[Mapping[str, str], Iterable[tuple[str, str]]]


class SignatureError(Exception):
    """The request cannot be trusted as coming from the gateway; answer 401 and log ``code``."""

    code = "signature_error"


class MissingSignature(SignatureError):
    code = "missing_signature"


class MalformedSignature(SignatureError):
    code = "malformed_signature"


class UnknownKeyId(SignatureError):
    code = "unknown_key_id"


class BadSignature(SignatureError):
    code = "bad_signature"


class ExpiredSignature(SignatureError):
    code = "expired_signature"


class FutureSignature(SignatureError):
    code = "future_signature"


@dataclass(frozen=True)
class Identity:
    """The verified caller. On a public route org_id, key_id and scopes are empty."""

    org_id: str
    key_id: str
    scopes: tuple[str, ...]
    request_id: str

    @property
    def authenticated(self) -> bool:
        """True when an API key was verified (False: a public route, no key)."""
        return bool(self.key_id)


def parse_secrets(value: str) -> dict[str, bytes]:
    """``kid1:secret1,kid2:secret2`` -> {kid: secret bytes}; the same rules as the gateway's setting."""
    parsed: dict[str, bytes] = {}
    for number, entry in enumerate((e.strip() for e in value.split(",")), start=1):
        if not entry:
            continue
        kid, sep, secret = entry.partition(":")
        # Messages never repeat a secret (an entry without ":" may be a bare secret).
        if not sep:
            raise ValueError(f"entry {number} is not KEY_ID:SECRET")
        if not _KEY_ID.fullmatch(kid):
            raise ValueError(f"entry {number}: the key id must be 1-64 characters of A-Z a-z 0-9 . _ -")
        if kid in parsed:
            raise ValueError(f"key id {kid!r} appears twice")
        size = len(secret.encode("utf-8"))
        if size < MIN_SECRET_BYTES:
            raise ValueError(f"the secret of key id {kid!r} has {size} bytes; at least {MIN_SECRET_BYTES} are needed")
        if not _SECRET.fullmatch(secret):
            raise ValueError(f"the secret of key id {kid!r} must be printable ASCII without spaces or commas")
        parsed[kid] = secret.encode("ascii")
    if not parsed:
        raise ValueError("no KEY_ID:SECRET entry")
    return parsed


def canonical_string(
    *, kid: str, timestamp: int, method: str, target: str, org_id: str, key_id: str, scopes: str, request_id: str
) -> str:
    """``v1`` and eight fields, one per line, no trailing newline (a copy of gateway.signing's).

    Raises ValueError if a field contains CR, LF or NUL.
    """
    fields = (kid, str(timestamp), method, target, org_id, key_id, scopes, request_id)
    for value in fields:
        if _BREAKS_LINE.search(value):
            raise ValueError("a signed field contains CR, LF or NUL")
    return "\n".join((VERSION, *fields))


def verify_request(
    method: str,
    path_with_query: str,
    headers: Headers,
    secrets: Secrets,
    *,
    max_age: float = 300,
    now: float | None = None,
) -> Identity:
    """Check the gateway's signature over this request; return the identity it vouches for.

    ``path_with_query`` is the raw request target the backend received (e.g. aiohttp's
    ``request.raw_path``): not percent-decoded, with ``?query`` when there is one. ``headers``
    is a mapping (a multi-dict gives all its copies through ``items()``) or (name, value) pairs;
    names are compared case-insensitively. ``secrets`` maps key id -> secret (or is the
    ``kid:secret,...`` string). The timestamp must be within ``max_age`` seconds of ``now``.
    Raises a SignatureError subclass; never returns an unverified identity.
    """
    found = _collect(headers)
    if not all(name in found for name in ("signature", "kid", "timestamp")):
        raise MissingSignature("the request carries no complete gateway signature")
    sig = _SIGNATURE.fullmatch(found["signature"])
    if sig is None:
        raise MalformedSignature("X-Gateway-Signature is not v1= and 64 lower-case hex digits")
    if not _TIMESTAMP.fullmatch(found["timestamp"]):
        raise MalformedSignature("X-Gateway-Timestamp is not a whole number of seconds")
    kid = found["kid"]
    if not _KEY_ID.fullmatch(kid):
        raise MalformedSignature("X-Gateway-Signature-Key-Id is not 1-64 characters of A-Z a-z 0-9 . _ -")
    table = parse_secrets(secrets) if isinstance(secrets, str) else secrets
    if kid not in table:
        raise UnknownKeyId(f"unknown signing key id {kid!r}")
    secret = table[kid]
    secret = secret.encode("utf-8") if isinstance(secret, str) else secret
    timestamp = int(found["timestamp"])
    fields = {name: found.get(name, "") for name in ("org_id", "key_id", "scopes", "request_id")}
    try:
        canonical = canonical_string(kid=kid, timestamp=timestamp, method=method, target=path_with_query, **fields)
    except ValueError:
        raise MalformedSignature("a signed field contains CR, LF or NUL") from None
    expected = hmac.new(secret, canonical.encode("utf-8"), hashlib.sha256).hexdigest()
    # Constant time: the comparison must not tell an attacker how many leading digits are right.
    if not hmac.compare_digest(expected, sig.group(1)):
        raise BadSignature("the gateway signature does not match this request")
    # Checked after the HMAC, so an age error is only ever reported for an authentic request.
    now = time.time() if now is None else now
    if timestamp < now - max_age:
        raise ExpiredSignature(f"the signature is {int(now - timestamp)} s old (at most {max_age} s allowed)")
    if timestamp > now + max_age:
        raise FutureSignature(f"the timestamp is {int(timestamp - now)} s ahead (at most {max_age} s allowed)")
    return Identity(
        org_id=fields["org_id"], key_id=fields["key_id"], scopes=tuple(fields["scopes"].split()),
        request_id=fields["request_id"],
    )


def _collect(headers: Headers) -> dict[str, str]:
    """The signed headers by field; a repeated one (in any case or "_" spelling) is refused."""
    pairs = headers.items() if hasattr(headers, "items") else headers
    found: dict[str, str] = {}
    for name, value in pairs:
        field = _HEADERS.get(name.strip().lower().replace("_", "-"))
        if field is None:
            continue
        # Two copies could be read one way here and the other way by the backend's framework.
        if field in found:
            raise MalformedSignature(f"header {name.strip().lower()} appears more than once")
        found[field] = value.strip(" \t")
    return found
