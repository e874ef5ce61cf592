"""Checks on the query string of a request (pure; no I/O)."""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Iterable

from gateway.paths import fully_decoded

# Names, normalised as below, that frameworks such as Rails, Laravel, Symfony, Express
# method-override and ASP.NET read as "treat this request as another method".
METHOD_OVERRIDE_PARAMS = frozenset({
    "_method", "_httpmethod", "x_http_method_override", "x_http_method", "x_method_override",
})

_FOLDED_TO_UNDERSCORE = re.compile(r"[.\- ]")


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
    Rack read "_method[]" and "_method[0]" as "_method"), trimmed, lower-cased, and ".", " ",
    "-" folded to "_" (PHP turns "." and " " into "_"; the header-style "X-HTTP-Method-Override"
    is a parameter name too).
    """
    decoded = fully_decoded(name)
    if decoded is None:
        return True  # still encoded after every round: over-reporting is the safe side
    name = decoded
    if not name.isascii():
        name = unicodedata.normalize("NFKC", name)
    name = name.partition("\x00")[0].partition("[")[0]
    return _FOLDED_TO_UNDERSCORE.sub("_", name.strip().lower()) in METHOD_OVERRIDE_PARAMS
