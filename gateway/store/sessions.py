"""Page sign-in in Redis: started sign-ins (read once) and sessions (docs/operations.md, "Redis layout").

Callers pass digests, never the secrets: a login is stored under sha256(state), a session under
sha256(session id) (admin_api/signin_rules.digest). A session's tokens arrive sealed. Like the
store's other writes, a Redis fault passes through as one of ``FAULTS`` (faults.py), and
NotReplicated as itself (503 store_unconfirmed).
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from gateway.store.ledger import _one

# Only a session that exists is changed (never one recreated from the fields of a touch).
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# Compare-and-delete: the refresh claim is released only by the process that holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

class SessionStore:
    """Logins and sessions. The writes that take rights away (sign-out, a refresh that lowers
    the role) go through ``confirmed`` (KeyStore._confirmed: WAIT for the required replicas),
    so a failover cannot bring a signed-out session back."""

    def __init__(self, client: aioredis.Redis, prefix: str = "gw", confirmed=None) -> None:
        self.redis = client
        self.p = prefix
        self.live_index = f"{prefix}:sessions"
        self._confirmed = confirmed or (lambda steps: steps(client))
        self._update = client.register_script(_UPDATE)
        self._release = client.register_script(_RELEASE)

    def _login(self, state_sha: str) -> str:
        return f"{self.p}:login:{state_sha}"

    def _session(self, sid_sha: str) -> str:
        return f"{self.p}:session:{sid_sha}"

    async def put_login(self, state_sha: str, record: dict, ttl_ms: int) -> None:
        await self.redis.set(self._login(state_sha), json.dumps(record), px=ttl_ms)

    async def take_login(self, state_sha: str) -> dict | None:
        """The started sign-in, deleted as it is read (a state works once)."""
        raw = await self.redis.getdel(self._login(state_sha))
        return json.loads(raw) if raw else None

    async def create(self, sid_sha: str, fields: dict, ttl_ms: int, expires_ms: int, now_ms: int = 0) -> None:
        key = self._session(sid_sha)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
            pipe.pexpire(key, ttl_ms)
            await pipe.execute()
        await self.redis.zadd(self.live_index, {sid_sha: expires_ms})  # another slot: its own command
        await self.redis.zremrangebyscore(self.live_index, "-inf", now_ms)  # bounded without scrapes

    async def get(self, sid_sha: str) -> dict | None:
        raw = await self.redis.hgetall(self._session(sid_sha))
        if not raw or "sub" not in {_text(k) for k in raw}:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

    async def update(self, sid_sha: str, fields: dict, ttl_ms: int, live_until_ms: int) -> bool:
        """Change fields and the expiry of a session that still exists (False: it is gone)."""
        args = [ttl_ms]
        for k, v in fields.items():
            args += [k, str(v)]
        [done] = await self._confirmed(lambda c: _one(self._update(keys=[self._session(sid_sha)], args=args,
                                                                  client=c)))
        if done:
            await self.redis.zadd(self.live_index, {sid_sha: live_until_ms})
        return bool(done)

    async def delete(self, sid_sha: str) -> None:
        await self._confirmed(lambda c: _one(c.delete(self._session(sid_sha))))
        # Other slots on a cluster (no hash tag): their own commands, after the confirmed delete.
        await self.redis.delete(self._refreshing(sid_sha))
        await self.redis.zrem(self.live_index, sid_sha)

    def _refreshing(self, sid_sha: str) -> str:
        return f"{self.p}:session:{sid_sha}:refreshing"

    async def claim_refresh(self, sid_sha: str, owner: str, ttl_ms: int) -> bool:
        """Take the session's refresh for ``ttl_ms`` as ``owner`` (one admin API process refreshes
        it at a time: a provider that rotates refresh tokens would end the session on a second use)."""
        return bool(await self.redis.set(self._refreshing(sid_sha), owner, nx=True, px=ttl_ms))

    async def release_refresh(self, sid_sha: str, owner: str) -> None:
        """Give the claim back, if it is still ``owner``'s (never another process's later claim)."""
        await self._release(keys=[self._refreshing(sid_sha)], args=[owner])

    async def live(self, now_ms: int) -> int:
        """Sessions not past their absolute end (the index drops the others first). An idle
        session that Redis expired early is still counted until its absolute end."""
        await self.redis.zremrangebyscore(self.live_index, "-inf", now_ms)
        return int(await self.redis.zcard(self.live_index))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
