"""Checks on the query string of a request: credentials and method-override parameters (pure; no I/O)."""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Iterable
from urllib.parse import unquote_plus

from gateway.headers import fold_name
from gateway.keys import looks_like_key
from gateway.paths import fully_decoded

KEY_QUERY_NAMES = frozenset({"api_key", "apikey", "api-key", "x-api-key", "access_token"})

# Names, folded as below, that frameworks such as Rails, Laravel, Symfony, Express
# method-override and ASP.NET read as "treat this request as another method".
METHOD_OVERRIDE_PARAMS = frozenset({
    "-method", "-httpmethod", "x-http-method-override", "x-http-method", "x-method-override",
})

_FOLDED_LIKE_UNDERSCORE = re.compile(r"[. ]")  # PHP turns "." and " " into "_"; fold_name does "_"


def query_params(query: str) -> list[tuple[str, str]]:
    """Parse ``a=1&b=2`` into decoded (name, value) pairs, in order, blanks kept.

    Percent and "+" are decoded with errors="replace"; a pair without "=" has value "".
    Used only to look for credentials and method overrides in the query string.
    """
    pairs: list[tuple[str, str]] = []
    # SECURITY: ";" is split on as well as "&": some backends still accept it as a separator,
    # and a credential hidden behind one must be found too (over-reporting is the safe side).
    for part in re.split(r"[&;]", query):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote_plus(name, errors="replace"), unquote_plus(value, errors="replace")))
    return pairs


def key_in_query(params: Iterable[tuple[str, str]]) -> bool:
    """True if the query string carries something that could be a credential."""
    # SECURITY: refused rather than ignored, so keys do not end up in URL logs unnoticed.
    return any(name.lower() in KEY_QUERY_NAMES or looks_like_key(value) for name, value in params)


def method_override_in_query(params: Iterable[tuple[str, str]]) -> bool:
    """True if a parameter could make the backend run another method than the one authorized."""
    # SECURITY: refused, not stripped: the gateway authorizes the method on the request line,
    # and a backend honouring ?_method=DELETE would run something else.
    return any(override_name(name) for name, _ in params)


@functools.lru_cache(maxsize=4096)  # names repeat; bounded for hostile ones
def override_name(name: str) -> bool:
    """Is ``name`` (already percent-decoded once) a method-override parameter for some framework?

    SECURITY: the name is normalised the way frameworks read it, so no spelling slips by:
    percent-decoded until stable (a backend or a proxy on the way may decode again), NFKC for
    non-ASCII (fullwidth "＿method"), cut at a NUL (C parsers stop there) and at "[" (PHP and
    Rack read "_method[]" and "_method[0]" as "_method"), then folded like a header name
    (headers.fold_name: trimmed, lower-cased, "_" as "-") with "." and " " as "-" too (PHP turns
    them into "_"; the header-style "X-HTTP-Method-Override" is a parameter name too).
    """
    decoded = fully_decoded(name)
    if decoded is None:
        return True  # still encoded after every round: over-reporting is the safe side
    name = decoded
    if not name.isascii():
        name = unicodedata.normalize("NFKC", name)
    name = name.partition("\x00")[0].partition("[")[0]
    return _FOLDED_LIKE_UNDERSCORE.sub("-", fold_name(name)) in METHOD_OVERRIDE_PARAMS
