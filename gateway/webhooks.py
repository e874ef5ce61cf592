"""Webhook endpoints and their deliveries (issue 17, pure): the endpoint record, its signing
secret, the Standard Webhooks signature and headers, and the retry schedule.

Standard Webhooks (https://www.standardwebhooks.com): the secret is ``whsec_`` + base64 of its
bytes; each attempt carries ``webhook-id`` (the event id, the same on every attempt),
``webhook-timestamp`` (seconds, of this attempt) and ``webhook-signature``: ``v1,`` + base64 of
HMAC-SHA256(secret bytes, "<id>.<timestamp>.<body>").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

import msgspec

from gateway.events import EVENT_TYPES, TEST

TEST_TYPE = TEST  # the test-send's event type (only ever sent to the endpoint it tests)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks asks for 24 to 64
ENDPOINT_ID = re.compile(r"^wh_[a-z0-9]{16}$")
MAX_DESCRIPTION = 200
MAX_ENDPOINTS_PER_ORG = 20


class Endpoint(msgspec.Struct, frozen=True, omit_defaults=True):
    """One webhook endpoint of an org as stored (``secret`` included: it signs, so it is kept as
    it is; only the admin API's create and rotate answers show it)."""

    id: str
    org_id: str
    url: str
    secret: str
    events: tuple[str, ...] = ()  # empty: every event type
    description: str = ""
    created_at: int = 0
    created_by: str = ""
    updated_at: int = 0
    previous_secret: str = ""  # after a rotation: still signs beside ``secret`` until previous_until (ms)
    previous_until: int = 0

    def signing_secrets(self, now_ms: int) -> tuple[str, ...]:
        """The secrets an attempt at ``now_ms`` is signed with: the current one, and the rotated-out
        one during its grace (Standard Webhooks: receivers accept any one of the signatures)."""
        if self.previous_secret and now_ms < self.previous_until:
            return (self.secret, self.previous_secret)
        return (self.secret,)

    def rotated(self, new_secret: str, now_ms: int, grace_ms: int) -> Endpoint:
        """This endpoint with ``new_secret``; the current secret keeps signing for ``grace_ms``."""
        keep = grace_ms > 0
        return msgspec.structs.replace(self, secret=new_secret, updated_at=now_ms,
                                       previous_secret=self.secret if keep else "",
                                       previous_until=now_ms + grace_ms if keep else 0)

    def expired_previous(self, now_ms: int) -> bool:
        """Whether a rotated-out secret is past its grace (and is to be deleted)."""
        return bool(self.previous_secret) and now_ms >= self.previous_until

    def without_previous(self) -> Endpoint:
        return msgspec.structs.replace(self, previous_secret="", previous_until=0)

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint is subscribed to ``event_type`` (a test goes only where it is sent)."""
        return not self.events or event_type in self.events


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Endpoint)


def encode_endpoint(endpoint: Endpoint) -> bytes:
    return _ENCODER.encode(endpoint)


def decode_endpoint(raw: bytes) -> Endpoint | None:
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def secret_from(random_bytes: bytes) -> str:
    """The secret's text form for ``random_bytes`` (os.urandom / secrets.token_bytes)."""
    if len(random_bytes) < 24:
        raise ValueError("a signing secret needs at least 24 random bytes")
    return SECRET_PREFIX + base64.b64encode(random_bytes).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``<msg_id>.<timestamp>.<body>``."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()).decode()


def headers(secrets: str | tuple[str, ...], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt, signed with each of ``secrets`` (space-separated
    signatures, as Standard Webhooks has them during a secret rotation)."""
    secrets = (secrets,) if isinstance(secrets, str) else secrets
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets),
            "Content-Type": "application/json", "User-Agent": "api-key-gateway-webhooks/1"}


def backoff_ms(attempt: int, base_ms: int, cap_ms: int, jitter: float) -> int:
    """Milliseconds before the next attempt after ``attempt`` (1-based) failed: base * 2^(attempt-1),
    at most ``cap_ms``, times a ``jitter`` in [0, 1) drawn by the caller (full jitter on the upper
    half: the wait is between half and all of the step, so retries of many jobs spread out)."""
    step = min(cap_ms, base_ms * (2 ** max(0, attempt - 1)))
    return int(step / 2 + step / 2 * jitter)


def check_events(events: Any) -> tuple[str, ...]:
    """The subscribed event types: a list of EVENT_TYPES (or ["*"] / empty: all); ValueError else."""
    if events is None:
        return ()
    if not isinstance(events, (list, tuple)) or not all(isinstance(e, str) for e in events):
        raise ValueError("events must be a list of event types.")
    if list(events) in ([], ["*"]):
        return ()
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise ValueError(f"Unknown event types: {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}.")
    return tuple(t for t in EVENT_TYPES if t in events)


def check_description(text: Any) -> str:
    if text is None:
        return ""
    if not isinstance(text, str) or len(text) > MAX_DESCRIPTION or any(ord(c) < 0x20 for c in text):
        raise ValueError(f"description must be text of at most {MAX_DESCRIPTION} characters, without control characters.")
    return text


def job_id(event_id: str, endpoint_id: str) -> str:
    """The delivery job of one event to one endpoint: the same id if the event is read twice."""
    return f"{event_id}|{endpoint_id}"


def endpoint_of(job: str) -> str:
    return job.rsplit("|", 1)[-1]
