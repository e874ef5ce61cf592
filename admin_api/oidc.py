"""Access tokens of the OpenID provider (`Authorization: Bearer <JWT>`): verified with joserfc
against the provider's JWKS, found through its metadata and cached.

- Signature: one of ALGORITHMS (asymmetric only: no ``none``, no HS*, so the public key can never
  serve as an HMAC secret), with the JWKS key its ``kid`` names; header ``typ`` ``at+jwt``
  (RFC 9068: an ID token is not an access token).
- Claims: ``iss`` = --oidc-issuer, ``aud`` holds --oidc-audience, ``exp`` required, ``nbf`` and
  ``iat`` honoured when present, all with --oidc-leeway seconds of clock skew.
- JWKS: fetched on first use, again after --oidc-jwks-max-age, and on a ``kid`` it does not hold
  (key rotation), at most once per --oidc-jwks-min-refetch seconds. Provider unreachable (or
  answering nonsense) while the keys are needed: 503 ``idp_unavailable``, never 401.
The token itself is never logged nor kept.

ID tokens of page sign-in (admin_api/signin.py) are checked here too, against the same cached
JWKS and metadata (``id_token_claims``): signature (same allow-list), ``iss``, ``aud`` holding
--oidc-client-id (``azp`` = the client when present or when ``aud`` names others), ``exp`` and
``iat`` (not in the future) with the leeway, ``sub``, and the ``nonce`` of the sign-in.
After a failed fetch, everything that needs the provider answers 503 at once for
--oidc-backoff seconds (``backoff``), so a provider that is down is not asked on every request.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import aiohttp
from joserfc import jwt
from joserfc.errors import ClaimError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from admin_api.signin_rules import insecure_endpoints
from gateway import errors
from gateway.config import AdminSettings

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
TOKEN_TYPES = ("at+jwt", "application/at+jwt")
# Which check an ID token failed, in words for the sign-in error page.
ID_TOKEN_CLAIM_FAILURES = {
    "iss": "it was issued by another provider (iss)", "aud": "it was issued for another client (aud)",
    "exp": "it has expired (exp)", "iat": "its issue time is missing or in the future (iat)",
    "nbf": "it is not valid yet (nbf)", "sub": "it names no person (sub)",
    "nonce": "its nonce is not this sign-in's (nonce)",
}


class ProviderUnreachable(Exception):
    """The provider's metadata or JWKS could not be fetched (the reason, never a token)."""


class BadIdToken(Exception):
    """An ID token that does not verify; the message says which check failed (never the token)."""


class OidcVerifier:
    def __init__(self, settings: AdminSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.keys: KeySet | None = None
        self.metadata: dict | None = None
        self.fetched_at = float("-inf")
        self.failed_at = float("-inf")  # the last failed fetch (metadata, JWKS or token endpoint)
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.oidc_timeout))
        return self._session

    @property
    def loaded(self) -> bool:
        """Metadata and JWKS are held (for /readyz)."""
        return self.keys is not None and self.metadata is not None

    def backoff(self, now: float) -> bool:
        """Within --oidc-backoff of a failed fetch: answer 503 without asking the provider."""
        return now - self.failed_at < self.settings.oidc_backoff

    def failed(self, now: float) -> None:
        self.failed_at = now

    async def provider_metadata(self) -> dict:
        """The provider's metadata (fetched with its JWKS when stale); errors.IdpUnavailable."""
        now = self.clock()
        if self.metadata is None or now - self.fetched_at >= self.settings.oidc_jwks_max_age:
            await self._refresh(now)
        assert self.metadata is not None
        return self.metadata

    async def load(self) -> None:
        """Fetch metadata and JWKS now (start-up); errors.IdpUnavailable when that fails."""
        await self._refresh(self.clock())

    async def claims(self, token: str) -> dict:
        """The verified claims of ``token``; errors.InvalidToken when it does not verify,
        errors.IdpUnavailable when the keys to check it cannot be had."""
        return await self._with_keys(lambda now: self._verify(token, now), errors.InvalidToken)

    async def id_token_claims(self, token: str, nonce: str | None) -> dict:
        """The verified claims of an ID token for --oidc-client-id (``nonce``: the sign-in's, or
        None on a refresh, where the provider need not repeat it); BadIdToken when it does not
        verify, errors.IdpUnavailable when the keys cannot be had."""
        return await self._with_keys(lambda now: self._verify_id(token, now, nonce),
                                     lambda: BadIdToken("its signing key is not one the provider publishes"))

    async def _with_keys(self, verify: Callable[[float], dict], unknown_kid: Callable[[], Exception]) -> dict:
        now = self.clock()
        if self.keys is None or now - self.fetched_at >= self.settings.oidc_jwks_max_age:
            await self._refresh(now)
        try:
            return verify(now)
        except InvalidKeyIdError:
            pass
        # A kid the cached JWKS lacks: the provider may have rotated. Refetch, rate-limited so that
        # tokens with made-up kids cannot make this process hammer the provider.
        if now - self.fetched_at < self.settings.oidc_jwks_min_refetch:
            raise unknown_kid()
        await self._refresh(now)
        try:
            return verify(now)
        except InvalidKeyIdError:
            raise unknown_kid() from None

    def _verify_id(self, token: str, now: float, nonce: str | None) -> dict:
        s = self.settings
        assert self.keys is not None
        try:
            decoded = jwt.decode(token, self.keys, algorithms=list(ALGORITHMS))
        except InvalidKeyIdError:
            raise
        except (JoseError, ValueError, TypeError):
            raise BadIdToken("its signature does not verify") from None
        if decoded.header.get("typ") in TOKEN_TYPES:
            raise BadIdToken("it is an access token, not an ID token")
        claims = decoded.claims
        rules = {"iss": {"essential": True, "value": s.oidc_issuer}, "aud": {"essential": True, "value": s.oidc_client_id},
                 "exp": {"essential": True}, "iat": {"essential": True}, "sub": {"essential": True}}
        if nonce is not None:
            rules["nonce"] = {"essential": True, "value": nonce}
        try:
            jwt.JWTClaimsRegistry(now=int(now), leeway=int(s.oidc_leeway), **rules).validate(claims)
        except ClaimError as exc:
            raise BadIdToken(ID_TOKEN_CLAIM_FAILURES.get(exc.claim, f"its claim {exc.claim} is invalid")) from None
        except (JoseError, ValueError, TypeError):
            raise BadIdToken("its claims are malformed") from None
        iat = claims.get("iat")
        if not isinstance(iat, (int, float)) or iat > now + s.oidc_leeway:
            raise BadIdToken("its issue time is missing or in the future")
        aud = claims["aud"]
        others = isinstance(aud, list) and any(a != s.oidc_client_id for a in aud)
        if (others or "azp" in claims) and claims.get("azp") != s.oidc_client_id:
            raise BadIdToken("it was issued for another client (azp)")
        return claims

    def _verify(self, token: str, now: float) -> dict:
        s = self.settings
        assert self.keys is not None
        try:
            decoded = jwt.decode(token, self.keys, algorithms=list(ALGORITHMS))
            if decoded.header.get("typ") not in TOKEN_TYPES:
                raise errors.InvalidToken()
            jwt.JWTClaimsRegistry(
                now=int(now), leeway=int(s.oidc_leeway),
                iss={"essential": True, "value": s.oidc_issuer},
                aud={"essential": True, "value": s.oidc_audience},
                exp={"essential": True}, sub={"essential": True},
            ).validate(decoded.claims)
        except InvalidKeyIdError:
            raise
        except (JoseError, ValueError, TypeError):
            # joserfc's own errors; a malformed segment can surface as ValueError (bad base64, JSON).
            raise errors.InvalidToken() from None
        return decoded.claims

    async def _refresh(self, now: float) -> None:
        async with self._lock:
            if self.fetched_at >= now:  # another request fetched while this one waited
                return
            if self.backoff(now):
                raise errors.IdpUnavailable()
            try:
                self.metadata, self.keys = await self._fetch()
            except ProviderUnreachable:
                self.failed(now)
                raise errors.IdpUnavailable() from None
            self.fetched_at = now

    async def _fetch(self) -> tuple[dict, KeySet]:
        s = self.settings
        self.http  # noqa: B018  (created on first use)
        try:
            metadata = await self._get_json(s.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration")
            if metadata.get("issuer") != s.oidc_issuer or not isinstance(metadata.get("jwks_uri"), str):
                raise ProviderUnreachable("metadata: issuer mismatch or no jwks_uri")
            bad = insecure_endpoints(metadata, s.oidc_issuer)
            if bad:  # SECURITY: the client secret and the tokens travel to these
                raise ProviderUnreachable(f"metadata: not https: {', '.join(bad)}")
            jwks = await self._get_json(metadata["jwks_uri"])
            keys = KeySet.import_key_set({"keys": [k for k in jwks.get("keys", []) if k.get("use", "sig") == "sig"]})
            return metadata, keys
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, TypeError, AttributeError, JoseError) as exc:
            raise ProviderUnreachable(type(exc).__name__) from None

    async def _get_json(self, url: str) -> dict:
        assert self._session is not None
        async with self._session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ProviderUnreachable(f"HTTP {response.status}")
            body = await response.json(content_type=None)
        if not isinstance(body, dict):
            raise ProviderUnreachable("not a JSON object")
        return body
