"""Org settings in Redis (issue 17; docs/operations.md, "Redis layout"): one JSON string per org,
``<prefix>:org:{<org_id>}:settings`` (gateway.orgsettings), and their log of changes,
``...:settings:log`` (codec.encode_event), indexed in the org's activity index as
``org_settings:<version>`` like key events. A change sets only the fields it names and writes its
event in one script, conditional on what was read (two concurrent changes of different fields
both stay: the later one reads again)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from redis.exceptions import RedisError

from gateway.model import ORG_SETTINGS_LOG, SETTINGS_UPDATED, Change, KeyEvent
from gateway.orgsettings import OrgSettings, decode_settings, encode_settings
from gateway.store.codec import encode_event, event_id
from gateway.store.faults import Unavailable
from gateway.store.finder import settings_changed

# Write the settings, their event and its activity-index entry, if the settings and their log are
# still as they were read. KEYS: the settings, their log, the org's activity index. ARGV: the value
# read ('' for none), the log's length read, the new value, the event, its index member, its time.
# 1 written; 0 changed meanwhile (read again).
_CHANGE = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] or redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
return 1
"""
CHANGE_ATTEMPTS = 8


class OrgSettingsStore:
    """``KeyStore.orgs``. ``confirmed``: KeyStore._confirmed (a settings change is acknowledged
    only once the replicas that must have it do)."""

    def __init__(self, client, prefix: str = "gw", confirmed=None) -> None:
        self.redis = client
        self.p = prefix
        self._confirmed = confirmed
        self._change = client.register_script(_CHANGE)

    def settings_key(self, org_id: str) -> str:
        return f"{self.p}:org:{{{org_id}}}:settings"

    def settings_log(self, org_id: str) -> str:
        """The settings' changes, oldest first: the event of version v is element v - 1."""
        return f"{self.p}:org:{{{org_id}}}:settings:log"

    def _activity(self, org_id: str) -> str:
        return f"{self.p}:org:{{{org_id}}}:activity"  # KeyStore._org_activity

    async def get(self, org_id: str) -> OrgSettings:
        """The org's settings (the defaults if it set none). Unavailable on a Redis fault."""
        try:
            raw = await self.redis.get(self.settings_key(org_id))
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err
        return decode_settings(raw)

    async def change(self, org_id: str, fields: dict[str, Any], actor: str,
                     now_ms: int) -> tuple[OrgSettings, OrgSettings, KeyEvent | None]:
        """Set ``fields`` (names of OrgSettings, values it validated) and nothing else, with an
        ``org.settings_updated`` event (actor, before -> after of each field that changed) in the
        org's activity log, atomically: (before, after, the event; None when nothing changed).
        Raises RedisError (NotReplicated included) like every acknowledged write."""
        key, log = self.settings_key(org_id), self.settings_log(org_id)
        for _ in range(CHANGE_ATTEMPTS):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.llen(log)
                raw, length = await pipe.execute()
            before = decode_settings(raw)
            after = msgspec.structs.replace(before, **fields)
            changes = {name: Change(getattr(before, name), value) for name, value in fields.items()
                       if getattr(before, name) != value}
            if not changes:
                return before, before, None
            event = KeyEvent(SETTINGS_UPDATED, ORG_SETTINGS_LOG, org_id, actor, now_ms, length + 1, changes)
            args = [raw or b"", length, encode_settings(after), encode_event(event),
                    event_id(ORG_SETTINGS_LOG, event.version), now_ms]
            keys = [key, log, self._activity(org_id)]
            if self._confirmed is None:
                done = await self._change(keys=keys, args=args)
            else:
                [done] = await self._confirmed(lambda c, keys=keys, args=args: _one(self._change(keys=keys, args=args, client=c)))
            if done:
                await settings_changed(self.redis, self.p, org_id, before, after, now_ms)  # (issue 17: the finder)
                return before, after, event
        from gateway.store.keystore import Contended
        raise Contended(f"the org's settings changed on each of {CHANGE_ATTEMPTS} attempts to change them")

    async def put(self, org_id: str, settings: OrgSettings) -> None:
        """Store the org's settings (confirmed by the required replicas). Raises RedisError
        (NotReplicated included) like every acknowledged write."""
        value = encode_settings(settings)
        if self._confirmed is None:
            await self.redis.set(self.settings_key(org_id), value)
        else:
            await self._confirmed(lambda c: _one(c.set(self.settings_key(org_id), value)))
        await settings_changed(self.redis, self.p, org_id, None, settings, int(time.time() * 1000))  # (the finder)


async def _one(call) -> list:
    return [await call]
