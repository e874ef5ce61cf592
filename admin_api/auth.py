"""Who is calling the admin API: an operator token (any org), an org's own API key, or a person's
access token from the OpenID provider (admin_api/oidc.py; claims mapped by admin_api/claims.py)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from admin_api.claims import BadClaims, person
from gateway import errors, keys
from gateway.config import AdminSettings
from gateway.credentials import extract_credential
from gateway.ratelimit import Limit
from gateway.store import KeyStore

if TYPE_CHECKING:
    from admin_api.oidc import OidcVerifier

READ, MANAGE = "api_keys:read", "api_keys:manage"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    actor: str  # recorded in the audit trail: "operator", "key:<key_id>" or "user:<sub> <email>"
    org_id: str | None  # None for operators (any org)
    scopes: frozenset[str]
    expires_at: int | None = None  # the key's own expiry: what it creates cannot outlive it
    grants_any: bool = False  # an org admin (person): may grant any permission of the catalogue
    # An org key's own limits (None: the default applies to it): what it creates, edits or rolls
    # may not be allowed more (operators and people are not held to this).
    limits: tuple[Limit, ...] | None = None

    @property
    def is_operator(self) -> bool:
        return self.org_id is None

    @property
    def key_id(self) -> str | None:
        """The caller's own key id (None for operators)."""
        return self.actor.removeprefix("key:") if self.actor.startswith("key:") else None

    @property
    def is_person(self) -> bool:
        return self.actor.startswith("user:")

    def require(self, scope: str, org_id: str | None = None) -> None:
        """Raise unless the caller may use ``scope`` on ``org_id``."""
        if self.is_operator:
            return
        # Another org answers 404, so an org key cannot even probe which orgs exist.
        if org_id is not None and org_id != self.org_id:
            raise errors.OrgNotFound()
        if not self.holds(scope):
            if not self.is_person:
                raise errors.InsufficientScope(scope)
            if not self.scopes:  # a person without any role in the org (a bearer token; a session has one)
                raise errors.NoOrgRole(self.org_id, scope)
            raise errors.InsufficientRole(self.org_id, "admin" if MANAGE in self.scopes else "viewer", scope)

    def holds(self, scope: str) -> bool:
        """Does the caller's key carry ``scope``? api_keys:manage implies api_keys:read."""
        return scope in self.scopes or (scope == READ and MANAGE in self.scopes)

    def grantable(self, scopes: list[str]) -> list[str]:
        """The requested scopes this caller may not grant (empty when all are fine): the ones
        it does not hold, by the same rule as ``require``."""
        if self.is_operator or self.grants_any:
            return []
        return [s for s in scopes if not self.holds(s)]


async def authenticate(headers, store: KeyStore, operator_tokens: tuple[str, ...], now_ms: int,
                       oidc: OidcVerifier | None = None) -> Principal:
    """Resolve the Authorization header to a Principal (401 otherwise). An org key's use is
    counted by the admin API's middleware once the answer is known, as the gateway counts it.
    With ``oidc``, a JWT (three dot-separated parts) is checked as the provider's access token."""
    try:
        token = extract_credential(headers)
    except errors.MissingApiKey:
        raise errors.MissingToken() from None
    except errors.InvalidApiKey:
        raise errors.InvalidToken() from None
    # SECURITY: the bytes as sent ("replace" would turn every undecodable byte into "?", so a
    # token with "?" in it would match other bytes too).
    try:
        token_bytes = token.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise errors.InvalidToken() from None
    # SECURITY: compare against every operator token in constant time; no early exit.
    is_operator = False
    for candidate in operator_tokens:
        is_operator |= hmac.compare_digest(token_bytes, candidate.encode("utf-8", "surrogateescape"))
    if is_operator:
        return Principal(actor="operator", org_id=None, scopes=frozenset())
    if oidc is not None and token.count(".") == 2:
        return person_principal(await oidc.claims(token), oidc.settings)
    try:
        parsed = keys.parse_key(token)
    except keys.InvalidKeyFormat:
        raise errors.InvalidToken() from None
    try:
        record = await store.verify(parsed, now_ms)  # no cache: the admin API always reads the truth
    except errors.InvalidApiKey:
        raise errors.InvalidToken() from None  # the admin API's code for a credential it does not know
    return Principal(actor=f"key:{record.id}", org_id=record.org_id, scopes=frozenset(record.scopes),
                     expires_at=record.expires_at, limits=record.limits)


def person_principal(claims: dict, settings: AdminSettings) -> Principal:
    """A verified access token's person: admin role -> api_keys:manage (and any permission to
    grant), viewer -> api_keys:read, no role -> nothing (403 no_org_role); always one org."""
    try:
        who = person(claims, org_claim=settings.oidc_org_claim, roles_claim=settings.oidc_roles_claim,
                     admin_role=settings.oidc_admin_role, viewer_role=settings.oidc_viewer_role)
    except BadClaims:
        raise errors.InvalidToken() from None
    scopes = {"admin": frozenset({MANAGE, READ}), "viewer": frozenset({READ}), "none": frozenset()}[who.role]
    return Principal(actor=who.actor, org_id=who.org_id, scopes=scopes, expires_at=None,
                     grants_any=who.role == "admin")
