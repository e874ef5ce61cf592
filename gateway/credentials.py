"""Find the caller's API key in the request headers (pure; no I/O)."""

from __future__ import annotations

from typing import Iterable

from gateway import errors
from gateway.keys import looks_like_key

KEY_QUERY_NAMES = frozenset({"api_key", "apikey", "api-key", "x-api-key", "access_token"})


def extract_credential(headers: Iterable[tuple[str, str]]) -> str:
    """Return the key from ``Authorization: Bearer`` or ``X-API-Key``.

    Raises MissingApiKey when neither is sent, AmbiguousCredentials when a header is repeated
    or the two headers disagree, InvalidApiKey for another Authorization scheme.
    """
    auth: list[str] = []
    api_key: list[str] = []
    for name, value in headers:
        lname = name.lower()
        if lname == "authorization":
            auth.append(value)
        elif lname == "x-api-key":
            api_key.append(value)
    if len(auth) > 1 or len(api_key) > 1:
        raise errors.AmbiguousCredentials()
    candidates = []
    if auth:
        scheme, _, token = auth[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.InvalidApiKey()
        candidates.append(token.strip())
    if api_key:
        candidates.append(api_key[0].strip())
    if not candidates:
        raise errors.MissingApiKey()
    if len(set(candidates)) > 1:
        raise errors.AmbiguousCredentials()
    return candidates[0]


def key_in_query(params: Iterable[tuple[str, str]]) -> bool:
    """True if the query string carries something that could be a credential."""
    # SECURITY: refused rather than ignored, so keys do not end up in URL logs unnoticed.
    return any(name.lower() in KEY_QUERY_NAMES or looks_like_key(value) for name, value in params)
