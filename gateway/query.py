"""Checks on the query string of a request (pure; no I/O)."""

from __future__ import annotations

from typing import Iterable

# Names (lower case, "_" folded to "-") that frameworks such as Rails, Laravel, Symfony and
# Express method-override read as "treat this request as another method".
METHOD_OVERRIDE_PARAMS = frozenset({
    "-method", "-httpmethod", "x-http-method-override", "x-http-method", "x-method-override",
})


def method_override_in_query(params: Iterable[tuple[str, str]]) -> bool:
    """True if a parameter could make the backend run another method than the one authorized."""
    # SECURITY: refused, not stripped: the gateway authorizes the method on the request line,
    # and a backend honouring ?_method=DELETE would run something else.
    return any(name.strip().lower().replace("_", "-") in METHOD_OVERRIDE_PARAMS for name, _ in params)
