"""An org's own settings about its keys (issue 17), pure: what a leak report does, when a key
counts as unused, and whether unused keys expire by themselves."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

REVOKE, FLAG = "revoke", "flag"


class OrgSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=False):
    leak_action: Annotated[Literal["revoke", "flag"], Meta(
        description="a key reported leaked by a secret scanner is revoked at once (revoke) or flagged and left"
                    " active (flag)")] = REVOKE
    unused_days: Annotated[int, Meta(ge=1, le=3650, description=(
        "an api_key.unused event is sent once a key has had no request for this many days"))] = 30
    expire_unused_days: Annotated[Annotated[int, Meta(ge=1, le=3650)] | None, Meta(description=(
        "keys with no request for this many days expire by themselves (null: never; off by default)"))] = None


DEFAULT_SETTINGS = OrgSettings()

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(OrgSettings)


def encode_settings(settings: OrgSettings) -> bytes:
    return _ENCODER.encode(settings)


def decode_settings(raw: bytes | None) -> OrgSettings:
    """The stored settings; the defaults when none are stored. A stored value that no longer
    decodes raises ValueError (never silently the defaults: a flag-only org would start revoking)."""
    if raw is None:
        return DEFAULT_SETTINGS
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise ValueError(f"stored org settings do not decode: {err}") from err
