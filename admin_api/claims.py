"""A provider's access-token claims -> the person, their org and role (pure: no I/O).

The mapping is configured in AdminSettings (--oidc-org-claim, --oidc-roles-claim,
--oidc-admin-role, --oidc-viewer-role). The actor recorded in created_by / revoked_by and the
activity log is ``user:<sub>``, followed by `` <email>`` when the token carries a plain e-mail
address that it does not mark unverified (``email_verified: false``), for example
``user:alice <alice@a.example>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from gateway import validation

Role = Literal["admin", "viewer", "none"]
_PRINTABLE = re.compile(r"[\x21-\x7e]{1,255}")  # no spaces, no controls: the actor stays one token
_EMAIL = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]{1,200}@[A-Za-z0-9.-]{1,100}")  # no < or >


class BadClaims(ValueError):
    """The token's claims cannot name a person of an org (the message says which claim)."""


@dataclass(frozen=True, slots=True)
class Person:
    actor: str
    org_id: str
    role: Role


def person(claims: dict[str, Any], *, org_claim: str, roles_claim: str, admin_role: str, viewer_role: str) -> Person:
    """Who the verified token names. A token without a usable ``sub`` or org is refused (never
    a caller without an org: that would read as an operator)."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not _PRINTABLE.fullmatch(sub):
        raise BadClaims("claim sub: expected 1 to 255 printable characters without spaces")
    org_id = claims.get(org_claim)
    if not isinstance(org_id, str) or not validation.is_org_id(org_id):
        raise BadClaims(f"claim {org_claim}: expected an org id")
    roles = claims.get(roles_claim, [])
    if isinstance(roles, str):
        roles = roles.split()  # a space-separated string, as some providers send scopes
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise BadClaims(f"claim {roles_claim}: expected a list of role names")
    role: Role = "admin" if admin_role in roles else "viewer" if viewer_role in roles else "none"
    email = claims.get("email")
    actor = f"user:{sub}"
    # An address the provider says it has not verified is not recorded as the person's.
    if isinstance(email, str) and _EMAIL.fullmatch(email) and claims.get("email_verified") is not False:
        actor += f" <{email}>"
    return Person(actor, org_id, role)
