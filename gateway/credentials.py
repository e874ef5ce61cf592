"""Find the caller's API key in the request headers, and keys pasted into the path (pure; no I/O).

The query string's checks are in gateway.query.
"""

from __future__ import annotations

from typing import Iterable

from gateway import errors
from gateway.keys import TYPE_PREFIX, holds_key_shape
from gateway.paths import fully_decoded


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


REDACTED_SEGMENT = "[redacted]"


def key_in_path(path: str) -> bool:
    """True if the canonical ``path`` (gateway/paths.py) holds something shaped like a key.

    The canonical path never percent-encodes base62 or "_", so a key decoded once is there as
    it is; one encoded twice or more shows as "%25" (a backend may decode again).
    """
    # The common path pays two substring checks.
    if TYPE_PREFIX not in path and "%25" not in path:
        return False
    return any(_segment_holds_key(seg) for seg in path[1:].split("/"))


def redacted_path(path: str) -> str:
    """The canonical ``path`` with every segment that holds a key replaced, for the access log."""
    return "/" + "/".join(REDACTED_SEGMENT if _segment_holds_key(seg) else seg for seg in path[1:].split("/"))


def _segment_holds_key(segment: str) -> bool:
    # SECURITY: a key pasted into the path would be logged and forwarded; it is looked for at
    # every depth of percent-encoding (decoding never removes a key's characters, so the fully
    # decoded segment shows it). A segment still encoded after every round is refused too.
    decoded = fully_decoded(segment)
    return decoded is None or holds_key_shape(decoded)
