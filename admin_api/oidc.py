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
"""

from __future__ import annotations

import asyncio
from typing import Callable

import aiohttp
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from gateway import errors
from gateway.config import AdminSettings

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
TOKEN_TYPES = ("at+jwt", "application/at+jwt")


class ProviderUnreachable(Exception):
    """The provider's metadata or JWKS could not be fetched (the reason, never a token)."""


class OidcVerifier:
    def __init__(self, settings: AdminSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.keys: KeySet | None = None
        self.fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def claims(self, token: str) -> dict:
        """The verified claims of ``token``; errors.InvalidToken when it does not verify,
        errors.IdpUnavailable when the keys to check it cannot be had."""
        now = self.clock()
        if now - self.fetched_at >= self.settings.oidc_jwks_max_age:
            await self._refresh(now)
        try:
            return self._verify(token, now)
        except InvalidKeyIdError:
            pass
        # A kid the cached JWKS lacks: the provider may have rotated. Refetch, rate-limited so that
        # tokens with made-up kids cannot make this process hammer the provider.
        if now - self.fetched_at < self.settings.oidc_jwks_min_refetch:
            raise errors.InvalidToken()
        await self._refresh(now)
        try:
            return self._verify(token, now)
        except InvalidKeyIdError:
            raise errors.InvalidToken() from None

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
            try:
                self.keys = await self._fetch()
            except ProviderUnreachable:
                raise errors.IdpUnavailable() from None
            self.fetched_at = now

    async def _fetch(self) -> KeySet:
        s = self.settings
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=s.oidc_timeout))
        try:
            metadata = await self._get_json(s.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration")
            if metadata.get("issuer") != s.oidc_issuer or not isinstance(metadata.get("jwks_uri"), str):
                raise ProviderUnreachable("metadata: issuer mismatch or no jwks_uri")
            jwks = await self._get_json(metadata["jwks_uri"])
            return KeySet.import_key_set({"keys": [k for k in jwks.get("keys", []) if k.get("use", "sig") == "sig"]})
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
