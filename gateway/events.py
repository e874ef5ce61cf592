"""Key events as an org hears them (issue 17): the event types and the webhook payload of each
(pure; the outbox is gateway.store.events).

A payload is what the Standard Webhooks specification calls the body: ``{"type", "timestamp",
"data"}``; ``data`` names the key (id, org, display prefix, name) and what happened to it, never a
secret. The id of a delivery's ``webhook-id`` header is the event's ``id``: the same for every
attempt, so a receiver can drop repeats (delivery is at least once).
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.model import KeyEvent, rfc3339

# The key's activity log actions (gateway.model.KEY_ACTIONS), then the events found about keys.
CREATED, UPDATED, ROLLED, REVOKED = "api_key.created", "api_key.updated", "api_key.rolled", "api_key.revoked"
LEAKED = "api_key.leaked"  # a secret scanner reported the key public (revoked or flagged: data.action)
EXPIRING = "api_key.expiring"  # 7 days and 1 day before expires_at (data.expires_at, data.days_left)
EXPIRED = "api_key.expired"  # expires_at passed
UNUSED = "api_key.unused"  # no request for the org's unused_days (data.last_used_at, data.days)
TEST = "webhook.test"  # the test-send of one endpoint (the page's button); delivered to that endpoint only

EVENT_TYPES = (CREATED, UPDATED, ROLLED, REVOKED, LEAKED, EXPIRING, EXPIRED, UNUSED)


class FeedEntry(msgspec.Struct, frozen=True, omit_defaults=True):
    """One entry of the outbox stream. A change of a key names its activity log event
    (``key_id`` + ``version``: the event is read from the key's log, where the change wrote it
    atomically; an entry whose event never landed is dropped); a found event (leaked, expiring,
    expired, unused) carries its own ``type`` and ``data``. ``id`` is unique per event."""

    id: str
    org_id: str
    at: int  # ms
    key_id: str = ""
    version: int = 0
    type: str = ""
    data: dict[str, Any] = {}


def change_id(key_id: str, version: int) -> str:
    """The event id of a key's change: stable, so a retried write or a re-read names it once."""
    return f"evt_{key_id}_{version}"


def payload(event_type: str, at_ms: int, data: dict[str, Any]) -> dict[str, Any]:
    """The body of a delivery (Standard Webhooks: type, timestamp, data)."""
    return {"type": event_type, "timestamp": rfc3339(at_ms), "data": data}


def change_payload(event: KeyEvent, key: dict[str, Any] | None = None) -> dict[str, Any]:
    """The payload of a key's activity log event; ``key``: the key as the admin API shows it
    (name, prefix, ...: gateway.model's public fields), when it could be read."""
    changes = {field: {"before": c.before, "after": c.after} for field, c in event.changes.items()}
    data = {"key_id": event.key_id, "org_id": event.org_id, "actor": event.actor, "version": event.version,
            "changes": changes}
    if key is not None:
        data["key"] = key
    return payload(event.action, event.at, data)
