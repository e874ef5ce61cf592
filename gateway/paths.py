"""Canonicalize the raw HTTP request target (pure; no I/O).

The gateway authorizes on exactly the path it forwards: ambiguous targets are rejected, not repaired.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import NamedTuple
from urllib.parse import quote, unquote, unquote_to_bytes

MAX_PATH_LENGTH = 8192
MAX_SEGMENTS = 64
# RFC 3986 unreserved + sub-delims + ":" "@", minus ";" (rejected). quote() always keeps
# A-Za-z0-9 and "-._~"; they are listed anyway so the set reads as documented.
SEGMENT_SAFE = "-._~!$&'()*+,=:@"

_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]*")
# The common case, canonical as it comes: segments of characters that quote() keeps as they
# are, none starting with "." (so no dot segments), no "%" (nothing to decode), no empty
# segment but a single trailing one. Such a path is its own canonical form.
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-._~!$&'()*+,=:@]*)+/?|/")
_PLAIN_QUERY = re.compile(r"[\x21-\x22\x24-\x7e]*")  # printable ASCII without "#"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# SECURITY: characters that change how a backend splits or resolves a path once decoded:
# "/" and "\" (separators), ";" (matrix parameters / Tomcat path params), controls and NUL,
# C1 controls (U+0080-U+009F, NEL among them), line/paragraph separators and bidi controls
# (which split or reorder a logged path for whoever reads it).
_FORBIDDEN_DECODED = re.compile("[\x00-\x1f\x7f-\x9f/\\\\;\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class NotCanonical(ValueError):
    """The request target is refused; ``reason`` is short and never repeats the input."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Target(NamedTuple):
    """A canonical request target: decoded segments, the path to forward, the raw query."""

    segments: tuple[str, ...]
    path: str
    query: str


def canonicalize(raw_target: str) -> Target:
    """Validate ``raw_target`` (as in the request line) and return its canonical form.

    Raises NotCanonical for anything that is not an unambiguous origin-form target.
    ``canonicalize(t.path)`` gives back ``t`` (with an empty query) for every result ``t``.
    """
    if isinstance(raw_target, str):
        raw_path, sep, query = raw_target.partition("?")
        if (len(raw_path) <= MAX_PATH_LENGTH and _PLAIN_PATH.fullmatch(raw_path) is not None
                and (not sep or _PLAIN_QUERY.fullmatch(query) is not None)):
            segments = tuple(raw_path[1:].split("/")) if raw_path != "/" else ()
            if len(segments) <= MAX_SEGMENTS:
                return Target(segments=segments, path=raw_path, query=query)
    return _canonicalize(raw_target)


def _canonicalize(raw_target: str) -> Target:
    """canonicalize() for every target: the fast path above gives the same result (tested)."""
    if not isinstance(raw_target, str):
        raise NotCanonical("target is not text")
    if not raw_target:
        raise NotCanonical("empty target")
    # SECURITY: only origin-form; absolute-form, authority-form and "*" would let the client
    # pick what the path means (or which host it is for).
    if raw_target[0] != "/":
        raise NotCanonical("target must start with /")
    raw_path, _, query = raw_target.partition("?")
    if len(raw_path) > MAX_PATH_LENGTH:
        raise NotCanonical("path too long")
    # SECURITY: whitespace, controls, DEL, non-ASCII and surrogate escapes are refused outright
    # instead of being encoded, so no two parsers can disagree about where the target ends.
    if _PRINTABLE_ASCII.fullmatch(raw_target) is None:
        raise NotCanonical("character outside printable ASCII")
    # SECURITY: a fragment is never sent by a conforming client; some servers cut the path at it.
    if "#" in raw_target:
        raise NotCanonical("fragment not allowed")
    # SECURITY: some backends (and most Windows stacks) treat "\" as a path separator.
    if "\\" in raw_path:
        raise NotCanonical("backslash in path")

    raw_segments = raw_path[1:].split("/") if raw_path != "/" else []
    if len(raw_segments) > MAX_SEGMENTS:
        raise NotCanonical("too many segments")
    # SECURITY: "//" is collapsed by some routers and not others; only a single trailing slash
    # (a final empty segment) is allowed.
    if any(seg == "" for seg in raw_segments[:-1]):
        raise NotCanonical("empty path segment")

    segments = tuple(_decode_segment(seg) for seg in raw_segments)
    path = "/" + "/".join(quote(seg, safe=SEGMENT_SAFE) for seg in segments)
    # Re-encoding can lengthen the path ('"' -> "%22"); checked again so that canonicalizing
    # the forwarded path always succeeds (idempotence).
    if len(path) > MAX_PATH_LENGTH:
        raise NotCanonical("path too long")
    return Target(segments=segments, path=path, query=query)


def _decode_segment(raw: str) -> str:
    """Strictly percent-decode one raw segment and refuse what could be re-read differently."""
    if _BAD_ESCAPE.search(raw):
        raise NotCanonical("malformed percent-escape")
    try:
        # SECURITY: strict UTF-8 refuses overlong forms (%C0%AE is not "."), surrogates and
        # truncated sequences, which lenient decoders turn into "/" or "." or U+FFFD.
        decoded = unquote_to_bytes(raw).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise NotCanonical("invalid UTF-8 in path") from None
    if _FORBIDDEN_DECODED.search(decoded):
        raise NotCanonical("forbidden character in path segment")
    # SECURITY: dot segments, raw or encoded, are refused: the backend (or an HTTP client on
    # the way) would resolve them, so the route authorized here would not be the one served.
    if decoded in (".", ".."):
        raise NotCanonical("dot segment")
    if not decoded.isascii() and _compatibility_confusable(decoded):
        raise NotCanonical("look-alike character in path segment")
    return decoded


def _compatibility_confusable(segment: str) -> bool:
    """True if a backend could read the non-ASCII ``segment`` as other ASCII than the gateway did.

    SECURITY: decided by rule, not by a list of code points. A non-ASCII character is refused
    when its NFKC form holds any ASCII character (U+FF0F fullwidth solidus is "/", U+2024 one
    dot leader is ".", U+FF3C is "\\", fullwidth letters would spell another route's literal),
    or when it is a math symbol (Sm) or "other" punctuation (Po): the classes where the
    look-alikes that NFKC keeps but best-fit and transliterating decoders map to "/", "\\"
    and "." live (U+2215 division slash, U+2044 fraction slash, U+2216 set minus, U+3002).
    So is a segment whose NFKC form as a whole is a dot segment or holds a forbidden character.
    """
    if any(map(_look_alike, segment)):
        return True
    folded = unicodedata.normalize("NFKC", segment)
    return folded in (".", "..") or _FORBIDDEN_DECODED.search(folded) is not None


# Unicode general categories holding look-alikes of "/", "\" and "." that NFKC leaves alone.
_LOOK_ALIKE_CATEGORIES = frozenset({"Sm", "Po"})


@functools.lru_cache(maxsize=4096)  # bounded: the characters of hostile paths are unbounded
def _look_alike(char: str) -> bool:
    if char.isascii():
        return False
    return (unicodedata.category(char) in _LOOK_ALIKE_CATEGORIES
            or any(c.isascii() for c in unicodedata.normalize("NFKC", char)))


DECODE_ROUNDS = 4  # a text still percent-encoded after this many decodings is suspect in itself


def fully_decoded(text: str, rounds: int = DECODE_ROUNDS) -> str | None:
    """``text`` percent-decoded until it no longer changes (a backend, a proxy or a log
    pipeline may decode again), or None when it still changes after ``rounds`` decodings.

    SECURITY: for checks that must see through every layer of encoding (a key in the path, a
    method-override parameter name); None is for the caller to refuse.
    """
    for _ in range(rounds):
        if "%" not in text:
            return text
        decoded = unquote(text, errors="replace")
        if decoded == text:
            return text
        text = decoded
    return None if "%" in text and unquote(text, errors="replace") != text else text
