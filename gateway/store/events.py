"""The org event outbox in Redis (issue 17; docs/operations.md, "Redis layout").

One stream, ``<prefix>:events``: every change of a key appends an entry naming its activity log
event, in the same confirmed round trip as the org's activity index entry and before the change's
script (the event-log protocol: an entry whose event never landed in the key's log is dropped by
its reader), and every found event (leaked, expiring, expired, unused) appends one with its data.
Readers (the webhook dispatcher) use a consumer group, so an entry is handled at least once
whatever process dies. The stream is not capped by length (a MAXLEN cap dropped entries the group
had not read yet): handled entries are deleted, and the dispatcher trims below the group's oldest
pending entry (gateway.store.webhooks.WebhookStore.trim_outbox). While no admin API runs, the stream
grows with every change (about 150 bytes an entry; docs/webhooks.md).
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.exceptions import RedisError

from gateway.events import FeedEntry, change_id
from gateway.store.faults import Unavailable

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(FeedEntry)


def encode_entry(entry: FeedEntry) -> bytes:
    return _ENCODER.encode(entry)


def decode_entry(raw: bytes) -> FeedEntry | None:
    """An entry's ``e`` field; None if it is not one (a foreign or damaged entry is skipped)."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class EventFeed:
    """``KeyStore.events``: the outbox stream's name and its writes."""

    def __init__(self, client, prefix: str = "gw") -> None:
        self.redis = client
        self.stream = f"{prefix}:events"

    def add_change(self, client, org_id: str, key_id: str, version: int, at_ms: int):
        """The XADD of a key's change (queued on ``client``, a pipeline or the client: the caller
        awaits it with the activity index entry)."""
        entry = FeedEntry(change_id(key_id, version), org_id, at_ms, key_id=key_id, version=version)
        return client.xadd(self.stream, {"e": encode_entry(entry)})

    async def emit(self, entry: FeedEntry, client=None) -> None:
        """Append a found event. Raises Unavailable on a Redis fault (the caller keeps what it
        found and tries again: the finder's own bookkeeping says what was emitted)."""
        try:
            await (client or self.redis).xadd(self.stream, {"e": encode_entry(entry)})
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err

    async def emit_many(self, entries: list[FeedEntry]) -> None:
        """Append found events in one round trip (pipelined XADDs). Unavailable on a Redis fault."""
        if not entries:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.xadd(self.stream, {"e": encode_entry(entry)})
                await pipe.execute()
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err


def found_entry(event_id: str, org_id: str, at_ms: int, event_type: str, key_id: str,
                data: dict[str, Any]) -> FeedEntry:
    """A found event's entry (``event_id``: stable for the finding, e.g. "evt_<key>_expiring_7d_<expires_at>",
    so a finder that runs twice emits what a receiver can drop as a repeat)."""
    return FeedEntry(event_id, org_id, at_ms, key_id=key_id, type=event_type, data={"key_id": key_id, **data})
