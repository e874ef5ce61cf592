"""Secret-scanning reports in GitHub's partner program shape (issue 17), pure: the scanner's
public keys, the signature over the raw body, the report and the feedback it is answered with.

GitHub POSTs a JSON array of ``{token, type, url, source}`` signed with ECDSA P-256 / SHA-256 over
the exact body bytes (``Github-Public-Key-Signature``: base64 of the DER signature), naming the key
in ``Github-Public-Key-Identifier``; its keys are published as ``{"public_keys": [{"key_identifier",
"key" (PEM), "is_current"}]}``. The answer labels each token ``true_positive`` (a real key of
ours, active or not) or ``false_positive``, by the SHA-256 of the token (never the token).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from typing import Annotated, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from msgspec import Meta

SCANNER = "github"
ACTOR = "secret_scanning:github"  # the actor of the activity events a report writes
MAX_REPORT_BYTES = 1024 * 1024  # a report's body, read no further (GitHub sends up to about 1,000 tokens)
MAX_TOKENS = 1000  # entries of one report
MAX_SIGNATURE_CHARS = 512  # base64 of a DER P-256 signature is at most 96 characters
MAX_KEY_ID_CHARS = 256
TRUE_POSITIVE, FALSE_POSITIVE = "true_positive", "false_positive"


class ReportedToken(msgspec.Struct, frozen=True):
    """One entry of a report. Fields GitHub may add later are ignored (the body is signed)."""

    token: Annotated[str, Meta(min_length=1, max_length=1024)]
    type: Annotated[str, Meta(max_length=200)] = ""
    url: Annotated[str, Meta(max_length=4096)] = ""
    source: Annotated[str, Meta(max_length=200)] = ""


class Feedback(msgspec.Struct, frozen=True):
    token_hash: str
    token_type: str
    label: Literal["true_positive", "false_positive"]


class PublicKey(msgspec.Struct, frozen=True):
    key_identifier: Annotated[str, Meta(min_length=1, max_length=MAX_KEY_ID_CHARS)]
    key: str
    is_current: bool = False


class PublicKeys(msgspec.Struct, frozen=True):
    public_keys: list[PublicKey]


class BadReport(ValueError):
    """The body is not a report (the message says what is wrong; never a token)."""


_REPORT = msgspec.json.Decoder(Annotated[list[ReportedToken], Meta(max_length=MAX_TOKENS)])
_KEYS = msgspec.json.Decoder(PublicKeys)
_FEEDBACK = msgspec.json.Encoder()


def parse_public_keys(raw: bytes) -> dict[str, ec.EllipticCurvePublicKey]:
    """key id -> P-256 public key of a ``public_keys`` document. ValueError for a document that is
    not one; keys that are not P-256 (or do not load) are left out."""
    try:
        doc = _KEYS.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise ValueError(f"not a public_keys document: {err}") from err
    out = {}
    for entry in doc.public_keys:
        try:
            key = serialization.load_pem_public_key(entry.key.encode())
        except (ValueError, TypeError, UnicodeEncodeError):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            out[entry.key_identifier] = key
    return out


def signature_valid(key: ec.EllipticCurvePublicKey, signature_b64: str, body: bytes) -> bool:
    """Does the base64 DER ECDSA signature verify over exactly ``body`` (SHA-256)?"""
    if len(signature_b64) > MAX_SIGNATURE_CHARS:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        if base64.b64encode(signature).decode() != signature_b64:
            return False  # one spelling only: no padding games
        key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def parse_report(body: bytes) -> list[ReportedToken]:
    """The entries of a signed report; BadReport for anything else (not JSON, not an array of
    objects with a string ``token``, more than MAX_TOKENS entries, a field too long)."""
    try:
        return _REPORT.decode(body)
    except msgspec.ValidationError as err:
        raise BadReport(f"The report is not an array of at most {MAX_TOKENS} {{token, type, url, source}} "
                        f"objects: {err}.") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise BadReport("The report is not valid JSON.") from None


def token_hash(token: str) -> str:
    """The SHA-256 hex of a reported token: how the feedback names it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def feedback(entries: list[ReportedToken], ours: set[str]) -> bytes:
    """The answer: one label per entry, in order (``ours``: the tokens that are real keys)."""
    return _FEEDBACK.encode([Feedback(token_hash(e.token), e.type, TRUE_POSITIVE if e.token in ours else FALSE_POSITIVE)
                             for e in entries])


def reported_key(record, digest: str, now_ms: int) -> tuple[bool, bool]:
    """(ours, to act on) for the record a reported token's key id names (None: no such key):
    ours if the token is one of the key's secrets (its digest); to act on unless the key is
    revoked already or that secret was rolled away and no longer works."""
    if record is None or not secrets.compare_digest(record.digest, digest):
        return False, False
    if record.revoked_at is not None:
        return True, False
    return True, record.secret_ends_at is None or record.secret_ends_at > now_ms
