"""Org settings in Redis (issue 17; docs/operations.md, "Redis layout"): one JSON string per org,
``<prefix>:org:{<org_id>}:settings`` (gateway.orgsettings)."""

from __future__ import annotations

from redis.exceptions import RedisError

from gateway.orgsettings import OrgSettings, decode_settings, encode_settings
from gateway.store.faults import Unavailable


class OrgSettingsStore:
    """``KeyStore.orgs``. ``confirmed``: KeyStore._confirmed (a settings change is acknowledged
    only once the replicas that must have it do)."""

    def __init__(self, client, prefix: str = "gw", confirmed=None) -> None:
        self.redis = client
        self.p = prefix
        self._confirmed = confirmed

    def settings_key(self, org_id: str) -> str:
        return f"{self.p}:org:{{{org_id}}}:settings"

    async def get(self, org_id: str) -> OrgSettings:
        """The org's settings (the defaults if it set none). Unavailable on a Redis fault."""
        try:
            raw = await self.redis.get(self.settings_key(org_id))
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err
        return decode_settings(raw)

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
