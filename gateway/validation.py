"""What the admin API and the `gateway keys` CLI accept: key names, organization and key ids, scopes,
limits.

Pure: each check returns the value to use or raises InvalidField naming the field at fault;
the admin API turns that into its 400, the CLI into one line on stderr.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Callable, Collection, Iterable, Sequence

from gateway.model import EXPIRY_CHOICES, KEY_ID_PATTERN, ORG_ID_PATTERN, expires_at_for, rfc3339
from gateway.ratelimit import MAX_LIMIT, WINDOWS, Limit

NAME_MAX = 100  # also the page's maxlength and admin_api.schemas.NAME_PATTERN
# SECURITY: used with fullmatch, since "$" also matches before a final newline ("acme\n").
ORG_ID = re.compile(ORG_ID_PATTERN)
KEY_ID = re.compile(KEY_ID_PATTERN)
# The bidi embeddings, overrides and isolates (Trojan Source).
_BIDI_CONTROLS = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


class InvalidField(ValueError):
    """A value the API and the CLI refuse; ``field`` is the request field (name, org_id, key_id, scopes)."""

    def __init__(self, field: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.field = field
        self.extra = extra


def key_name(name: str) -> str:
    """The name to store: trimmed, 1-100 characters, no control, line-separator or bidi characters."""
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise InvalidField("name", f"The name must be 1 to {NAME_MAX} characters long.")
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ord(ch) in _BIDI_CONTROLS:
            raise InvalidField("name", "The name must not contain control characters.")
    return name


def is_org_id(value: str) -> bool:
    return ORG_ID.fullmatch(value) is not None


def is_key_id(value: str) -> bool:
    return KEY_ID.fullmatch(value) is not None


def org_id(value: str) -> str:
    if not is_org_id(value):
        raise InvalidField("org_id", "An organization ID is 1-64 letters, digits, '.', '_' or '-', "
                                     f"starting with a letter or digit; got {value!r}.")
    return value


def key_id(value: str) -> str:
    if not is_key_id(value):
        raise InvalidField("key_id", f"A key ID is 'key_' followed by letters and digits; got {value!r}.")
    return value


def key_scopes(scopes: Iterable[str], known: Collection[str]) -> list[str]:
    """De-duplicated (order kept), at least one, each of them in ``known``."""
    scopes = list(dict.fromkeys(scopes))
    if not scopes:
        raise InvalidField("scopes", "At least one scope is required.")
    unknown = [s for s in scopes if s not in known]
    if unknown:
        raise InvalidField("scopes", f"Unknown scopes: {', '.join(unknown)}.", unknown_scopes=unknown)
    return scopes


def expiry_within(choice: str, now_ms: int, cap_ms: int | None) -> int | None:
    """The expires_at of the ``expires_in`` choice, which may not be later than ``cap_ms``: the
    expiry of the key that creates it (None: no cap). A key cannot outlive its creator."""
    expires_at = expires_at_for(choice, now_ms)
    if cap_ms is None or (expires_at is not None and expires_at <= cap_ms):
        return expires_at
    fits = [c for c, period in EXPIRY_CHOICES.items() if period is not None and now_ms + period <= cap_ms]
    advice = f"choose {' or '.join(fits)}" if fits else "none of the choices fits; ask an operator or a key that expires later"
    raise InvalidField("expires_in", f"A key cannot outlive the key that creates it, which expires at "
                                     f"{rfc3339(cap_ms)}: {advice}.",
                       max_expires_at=rfc3339(cap_ms), allowed_expires_in=fits)


def earlier_expiry(text: str, now_ms: int, current_ms: int | None) -> int:
    """An edit's expires_at (RFC 3339 with Z or an offset) in ms: in the future and earlier than
    the key's current expiry (a later one is set with an expires_in choice)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidField("expires_at", "expires_at must be an RFC 3339 time, e.g. 2026-11-26T17:52:59Z.") from None
    if when.tzinfo is None:
        raise InvalidField("expires_at", "expires_at needs a time zone: Z or an offset such as +02:00.")
    ms = int(when.timestamp() * 1000)
    if ms <= now_ms:
        raise InvalidField("expires_at", "expires_at must be in the future (revoke a key to stop it now).")
    if current_ms is not None and ms >= current_ms:
        raise InvalidField("expires_at", f"expires_at can only make the expiry earlier than {rfc3339(current_ms)}; "
                                         f"choose a later one with expires_in ({', '.join(EXPIRY_CHOICES)}).")
    return ms


def if_match(header: str | None) -> int | None:
    """The version of an If-Match header (``"3"``, as the ETag is sent); None when absent."""
    if header is None:
        return None
    text = header.strip()
    if len(text) >= 3 and text[0] == text[-1] == '"' and text[1:-1].isascii() and text[1:-1].isdigit():
        return int(text[1:-1])
    raise InvalidField("If-Match", 'If-Match must be the ETag of the key as sent, e.g. "3".')


def key_limits(pairs: Iterable[tuple[object, object]],
               ceiling: Callable[[Sequence[Limit]], None] | None = None) -> tuple[Limit, ...]:
    """A key's own limits from (window, limit) pairs, shortest window first: known windows, one
    limit per window, each 1..MAX_LIMIT, at least one (no limits of its own is None, not an empty
    list), and none above the configured maximum (``ceiling``: LimitsConfig.check)."""
    out: dict[str, Limit] = {}
    for i, (window, limit) in enumerate(pairs):
        if window not in WINDOWS:
            raise InvalidField("limits", f"limits[{i}].window must be one of: {', '.join(WINDOWS)}; got {window!r}.")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidField("limits", f"limits[{i}].limit must be an integer from 1 to {MAX_LIMIT}; got {limit!r}.")
        if window in out:
            raise InvalidField("limits", f"limits: one limit per window; {window} is given more than once.")
        out[window] = Limit(window, limit)
    if not out:
        raise InvalidField("limits", "limits needs at least one limit; null clears the key's own (the default applies).")
    limits = tuple(out[w] for w in WINDOWS if w in out)
    if ceiling is not None:
        try:
            ceiling(limits)
        except ValueError as exc:
            raise InvalidField("limits", f"limits: {exc}.") from None
    return limits


def limit_flag(text: str) -> tuple[str, int | str]:
    """``minute=600`` (the CLI's --limit) -> ("minute", 600), for key_limits to check; a limit that
    is not a plain integer stays text (key_limits names it)."""
    window, sep, amount = text.partition("=")
    if not sep:
        raise InvalidField("limits", f"expected WINDOW=N (windows: {', '.join(WINDOWS)}), e.g. minute=600; got {text!r}.")
    amount = amount.strip()
    return window.strip(), int(amount) if amount.isascii() and amount.isdigit() else amount


def looser_than(limits: Sequence[Limit], cap: Sequence[Limit]) -> list[tuple[Limit, int | None]]:
    """The limits of ``cap`` that ``limits`` (enforced limits both) leaves out or sets higher, each
    with what ``limits`` sets on its window (None: nothing). Empty when ``limits`` is at least as
    strict on every window of ``cap``."""
    given = {limit.window: limit.limit for limit in limits}
    return [(limit, given.get(limit.window)) for limit in cap
            if given.get(limit.window) is None or given[limit.window] > limit.limit]
