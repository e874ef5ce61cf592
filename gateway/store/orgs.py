"""Org settings in Redis (issue 17; docs/operations.md, "Redis layout"): one JSON string per org,
``<prefix>:org:{<org_id>}:settings`` (gateway.orgsettings). A change writes only the fields it
names, in one script (read-merge-write atomic: two concurrent changes of different fields both stay)."""

from __future__ import annotations

from typing import Any

import msgspec
from redis.exceptions import RedisError

from gateway.orgsettings import OrgSettings, decode_settings, encode_settings
from gateway.store.faults import Unavailable

# KEYS: the settings. ARGV: a JSON object of the fields to set. Returns {before or false, after}.
_CHANGE = """
local cur = redis.call('GET', KEYS[1])
local t = {}
if cur then t = cjson.decode(cur) end
for k, v in pairs(cjson.decode(ARGV[1])) do t[k] = v end
local new = cjson.encode(t)
if new ~= cur then redis.call('SET', KEYS[1], new) end
return {cur or false, new}
"""


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

    async def get(self, org_id: str) -> OrgSettings:
        """The org's settings (the defaults if it set none). Unavailable on a Redis fault."""
        try:
            raw = await self.redis.get(self.settings_key(org_id))
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err
        return decode_settings(raw)

    async def change(self, org_id: str, fields: dict[str, Any]) -> tuple[OrgSettings, OrgSettings]:
        """Set ``fields`` (names of OrgSettings, values it validated) and nothing else, atomically;
        (before, after). Raises RedisError (NotReplicated included) like every acknowledged write."""
        args = [msgspec.json.encode(fields)]
        if self._confirmed is None:
            before, after = await self._change(keys=[self.settings_key(org_id)], args=args)
        else:
            [(before, after)] = await self._confirmed(
                lambda c: _one(self._change(keys=[self.settings_key(org_id)], args=args, client=c)))
        return decode_settings(before), decode_settings(after)

    async def put(self, org_id: str, settings: OrgSettings) -> None:
        """Store the org's settings (confirmed by the required replicas). Raises RedisError
        (NotReplicated included) like every acknowledged write."""
        value = encode_settings(settings)
        if self._confirmed is None:
            await self.redis.set(self.settings_key(org_id), value)
        else:
            await self._confirmed(lambda c: _one(c.set(self.settings_key(org_id), value)))


async def _one(call) -> list:
    return [await call]
