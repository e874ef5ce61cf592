"""The pure parts of page sign-in (admin_api/signin.py): secrets and their digests, the local
``return_to`` rule, the sealing of a session's tokens, cookies, CSRF and origin checks, and the
HTML page of a sign-in error. No I/O.

Sealing: the refresh and ID tokens are kept in Redis encrypted with AES-GCM under a key that is
HKDF-derived from the session id, which Redis never holds (only its SHA-256): a dump of Redis
alone yields no token usable at the provider.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import secrets
import urllib.parse

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway import errors

LOGIN_TTL = 600  # seconds a started sign-in (its state, and the login cookie) lasts
MAX_RETURN_TO = 512  # a pending sign-in's record stays small
_SEAL_INFO = b"api-key-gateway session tokens v1"


def new_secret() -> str:
    """32 random bytes, URL-safe base64 without padding: 43 characters."""
    return secrets.token_urlsafe(32)


def digest(value: str) -> str:
    """The hex SHA-256 under which a secret (session id, state, login binding) is stored."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def is_secret_shape(value: str | None) -> bool:
    """Could ``value`` be one of our 43-character secrets? (Anything else is not looked up.)"""
    return value is not None and len(value) == 43 and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)


def safe_return_to(value: str | None) -> str:
    """A local path to go back to after sign-in, or "/": never another origin. Refused: anything
    not starting with one "/", "//" and "/\\" (browsers read both as another host), any
    backslash, control character, space or non-ASCII (browsers drop tabs and newlines, so
    "/\\t/evil" would become "//evil"), and a scheme or host however spelled."""
    if not value or len(value) > MAX_RETURN_TO or not value.startswith("/") or value.startswith("//"):
        return "/"
    if any(not ("\x21" <= c <= "\x7e") or c == "\\" for c in value):
        return "/"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    # Percent-encoded slashes or backslashes right after the first "/" are refused too: a proxy or
    # framework that decodes once would turn them into "//".
    decoded = urllib.parse.unquote(value)
    if decoded.startswith(("//", "/\\")) or any(not ("\x20" <= c <= "\x7e") for c in decoded):
        return "/"
    return value


def _seal_key(session_id: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(session_id.encode())


def seal(session_id: str, tokens: dict) -> str:
    """``tokens`` encrypted for this session only (nonce + ciphertext, base64)."""
    nonce = os.urandom(12)
    sealed = AESGCM(_seal_key(session_id)).encrypt(nonce, json.dumps(tokens).encode(), digest(session_id).encode())
    return base64.b64encode(nonce + sealed).decode()


def unseal(session_id: str, blob: str) -> dict | None:
    """The tokens sealed for this session, or None (wrong session, damaged)."""
    try:
        raw = base64.b64decode(blob, validate=True)
        plain = AESGCM(_seal_key(session_id)).decrypt(raw[:12], raw[12:], digest(session_id).encode())
        tokens = json.loads(plain)
    except (InvalidTag, ValueError, TypeError):
        return None
    return tokens if isinstance(tokens, dict) else None


def cookie_names(insecure: bool) -> tuple[str, str]:
    """(session cookie, login cookie): __Host- prefixed unless cookies are insecure (local http)."""
    prefix = "" if insecure else "__Host-"
    return prefix + "gw_session", prefix + "gw_login"


def cookie_header(name: str, value: str, *, max_age: int, same_site: str, insecure: bool) -> str:
    """One Set-Cookie value: HttpOnly, Path=/, Secure unless insecure, no Domain (host-only)."""
    parts = [f"{name}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly", f"SameSite={same_site}"]
    if not insecure:
        parts.append("Secure")
    return "; ".join(parts)


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL, as a browser's Origin header spells it."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def csrf_ok(expected: str, given: str | None, origin: str | None, public_origin: str) -> bool:
    """The CSRF rule of a state-changing request made with a session cookie: X-CSRF-Token
    equal to the session's (constant time) and, when the browser sends Origin, the page's own."""
    if not is_secret_shape(expected):  # SECURITY: a session without a token of its own accepts none
        return False
    if given is None or not hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape")):
        return False
    return origin is None or origin.lower() == public_origin


def error_page(err: errors.ApiError, *, sign_in_again: bool = False) -> str:
    """The HTML page of a sign-in error: status, code and message (escaped), the page's style
    sheet, no script; a link back to "/" and, when useful, to sign in with another account."""
    esc = html.escape
    again = ('<p><a href="/auth/login?prompt=login">Sign in with another account</a></p>' if sign_in_again else "")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(_titles.get(err.code, 'Sign-in failed'))}</title>"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<link rel=\"stylesheet\" href=\"/static/app.css\"></head>\n"
        f"<body><main class=\"signin-error\"><h1>{esc(_titles.get(err.code, 'Sign-in failed'))}</h1>"
        f"<p class=\"error-code\">{err.status} {esc(err.code)}</p><p>{esc(err.message)}</p>{again}"
        "<p><a href=\"/\">Back to API keys</a></p></main></body></html>\n"
    )


_titles = {"sign_in_failed": "Sign-in failed", "no_org_role": "No role in this organization",
           "idp_unavailable": "Identity provider unavailable", "not_found": "Sign-in is not configured",
           "store_unavailable": "Sign-in is unavailable for a moment", "too_many_sign_ins": "Too many sign-ins"}


ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint", "userinfo_endpoint")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def insecure_endpoints(metadata: dict, issuer: str) -> list[str]:
    """The endpoints of ``metadata`` this client must not use: not https, or http on a loopback
    address only when the issuer itself is one (a local provider), or not a string URL."""
    local = urllib.parse.urlsplit(issuer).scheme == "http"
    bad = []
    for name in ENDPOINTS:
        if name not in metadata:
            continue
        value = metadata[name]
        url = urllib.parse.urlsplit(value) if isinstance(value, str) else None
        if url is None or not url.hostname or not (
                url.scheme == "https" or (local and url.scheme == "http" and url.hostname in LOOPBACK)):
            bad.append(name)
    return bad
