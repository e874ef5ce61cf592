"""The admin API's failed-auth throttle: the gateway's leaky buckets (gateway/throttle.py), per
client address, decided before any Redis command.

Every failed authentication (an unknown, malformed, expired or revoked credential; not a
missing one) counts against the client address. A credential this process has accepted
before (an org key or an operator token, bounded) skips the throttle, as known keys do on the
gateway, so an operator behind a NAT that someone is guessing from is not locked out; it is
still checked in full. A valid credential this process has never accepted is refused while
its address is blocked.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Callable, Iterable

from gateway import errors, keys
from gateway.clientaddr import client_address
from gateway.config import AdminSettings
from gateway.credentials import extract_credential
from gateway.throttle import FailureThrottle, KnownKeys

KNOWN_CREDENTIALS = 10_000  # accepted credentials remembered (oldest forgotten first)


class AuthGuard:
    """The throttle of one admin API process, and the credentials it has accepted."""

    def __init__(self, settings: AdminSettings, clock: Callable[[], float]) -> None:
        self.throttle = FailureThrottle.for_settings(settings, clock)
        self.known = KnownKeys(KNOWN_CREDENTIALS)
        self.trusted_nets = tuple(ipaddress.ip_network(c, strict=False) for c in settings.trusted_proxies)
        self.throttled = 0  # 429s answered (exported as a metric)

    def client(self, peer: str, headers: Iterable[tuple[str, str]]) -> str:
        """The address failures count against: the TCP peer, or X-Forwarded-For behind a trusted proxy."""
        return client_address(peer, (v for n, v in headers if n.lower() == "x-forwarded-for"), self.trusted_nets)

    def check(self, peer: str, headers: list[tuple[str, str]]) -> None:
        """429 too_many_failed_attempts while ``peer`` is blocked, unless the credential is one
        this process has accepted before. Pure: no Redis command."""
        if not self.throttle.tracking:
            return
        wait = self.throttle.retry_after(self.client(peer, headers))
        if not wait:
            return
        try:
            token = extract_credential(headers)
        except errors.ApiError:
            return  # missing or ambiguous: authentication answers that (401 / 400), as on the gateway
        known = _fingerprint(token)
        if known is None or not self.known.vouches_for(*known):
            self.throttled += 1
            raise errors.TooManyFailedAttempts(wait)

    def failed(self, peer: str, headers: list[tuple[str, str]]) -> None:
        self.throttle.record_failure(self.client(peer, headers))

    def accepted(self, headers: list[tuple[str, str]]) -> None:
        """Remember a credential that authenticated, so it is not locked out later."""
        known = _fingerprint(extract_credential(headers))
        if known is not None:
            self.known.add(*known)


def _fingerprint(token: str) -> tuple[str, str] | None:
    """(id, digest) of a credential: an API key's own; an operator token's SHA-256, never the token."""
    try:
        parsed = keys.parse_key(token)
        return parsed.key_id, parsed.digest
    except keys.InvalidKeyFormat:
        pass
    try:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
    except UnicodeEncodeError:
        return None
    return "operator:" + digest[:16], digest
