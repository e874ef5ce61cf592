"""Roll and edit a key, and the aliases a roll leaves (issue 14): the Redis side of KeyStore.roll,
KeyStore.edit and the aliases part of KeyStore.revoke.

A key's id is derived from its first secret; a later secret derives another id, under which an
ALIAS hash holds a copy of the record's shared fields, its own digest and the record's id
(gateway.store.codec). The record and its aliases are in different hash slots, so no script can
write them together (Redis Cluster). Every sequence of writes here is ordered so that stopping
after any step leaves the key LESS permissive than its record says, or harmless; never a live
secret the record does not list, nor an alias that grants more than the record:

- a roll writes the new alias first (nobody has its secret before the answer), then ends the
  older aliases (``_NARROW``), then the record (conditional on its version, atomic with the
  event); a failure after the first step leaves an alias nobody can use.
- an edit that removes scopes, makes the expiry earlier or narrows the limits (a lower limit, or
  one on a window that had none) narrows every alias first (scopes removed, expiry only ever
  earlier, per window the smaller limit: ``ratelimit.narrower``), then writes the record
  (conditional on its version), then brings the aliases to the record's new version (``_SYNC``, only ever forward: two concurrent
  edits cannot leave an alias older than the record).
- a revoke revokes the aliases it knows of, then the record, then any alias the record lists
  that it did not know of (one a concurrent roll added).
"""

from __future__ import annotations

import msgspec

from gateway import errors, keys
from gateway.model import Change, KeyEvent, KeyRecord, Leak, Secret, grace_end, rolled_secrets
from gateway.ratelimit import WINDOWS, Limit, narrower
from gateway.store.codec import (ALIAS_OF, EXPIRES_AT, LEAK, LIMITS, SECRETS, SECRET_ENDS_AT, decode_record,
                                 encode_alias, encode_event, encode_limits, encode_secrets, shared_fields)
from gateway.store.finder import expiry_member

# How long the hash of a secret that a roll ended is kept after its end: a client still sending
# it gets 401 rolled_api_key (use the new secret) instead of invalid_api_key (which looks like a
# typo or an attack) for a month, enough for a forgotten deployment to be noticed; then it goes
# (PEXPIREAT), so repeated rolls do not accumulate hashes. The record's own hash never goes.
TOMBSTONE_MS = 30 * 86_400_000

DEADLINE = """
local t = redis.call('TIME')
if t[1] * 1000 + math.floor(t[2] / 1000) > tonumber(ARGV[1]) then return -1 end
"""

# KEYS: the new alias. ARGV: deadline, field/value pairs. 0 if the id is taken (never in practice).
ALIAS_CREATE = DEADLINE + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# Make an alias less permissive, whatever its version: only ever an earlier secret end (g) or
# expiry (e), fewer scopes, a revocation. KEYS: the alias. ARGV: deadline, the record's id,
# g, e cap, scopes to remove (space-separated), revoked_at, revoked_by, PEXPIREAT ('' = none).
NARROW = DEADLINE + f"""
if redis.call('HGET', KEYS[1], '{ALIAS_OF}') ~= ARGV[2] then return 0 end
local function earlier(field, value)
  if value == '' then return end
  local cur = redis.call('HGET', KEYS[1], field)
  if not cur or tonumber(value) < tonumber(cur) then redis.call('HSET', KEYS[1], field, value) end
end
earlier('{SECRET_ENDS_AT}', ARGV[3])
earlier('{EXPIRES_AT}', ARGV[4])
if ARGV[5] ~= '' then
  local drop = {{}}
  for s in string.gmatch(ARGV[5], '%S+') do drop[s] = true end
  local kept = {{}}
  for s in string.gmatch(redis.call('HGET', KEYS[1], 's') or '', '%S+') do
    if not drop[s] then kept[#kept + 1] = s end
  end
  redis.call('HSET', KEYS[1], 's', table.concat(kept, ' '))
end
if ARGV[6] ~= '' and redis.call('HEXISTS', KEYS[1], 'r') == 0 then
  redis.call('HSET', KEYS[1], 'r', ARGV[6], 'R', ARGV[7])
end
if ARGV[8] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[8]) end
if ARGV[9] ~= '' then
  local least = {{}}
  for w, n in string.gmatch(redis.call('HGET', KEYS[1], '{LIMITS}') or '', '(%a+):(%d+)') do least[w] = tonumber(n) end
  for w, n in string.gmatch(ARGV[9], '(%a+):(%d+)') do
    if not least[w] or tonumber(n) < least[w] then least[w] = tonumber(n) end
  end
  local out = {{}}
  for _, w in ipairs({{{', '.join(repr(w) for w in WINDOWS)}}}) do
    if least[w] then out[#out + 1] = w .. ':' .. string.format('%d', least[w]) end
  end
  redis.call('HSET', KEYS[1], '{LIMITS}', table.concat(out, ' '))
end
return 1
"""

# Bring an alias to the record's version: only forward (or, repairing, to the same version),
# never removing a revocation. KEYS: the alias. ARGV: deadline, the record's id, the version,
# 1 to repair (rewrite an alias at that version too) else 0, the shared field/value pairs.
SYNC = DEADLINE + f"""
if redis.call('HGET', KEYS[1], '{ALIAS_OF}') ~= ARGV[2] then return 0 end
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v > tonumber(ARGV[3]) or (v == tonumber(ARGV[3]) and ARGV[4] ~= '1') then return 0 end
redis.call('HDEL', KEYS[1], '{EXPIRES_AT}', '{LIMITS}')
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
return 1
"""

# Change the record and log the event, atomically, if it is still the version that was read.
# KEYS: the record, its log. ARGV: deadline, org, expected version, now ('' = an expired key may
# change too), the encoded event, fields to delete (space-separated), then field/value pairs.
# Returns HGETALL; {0} no such key of the org, {-2} revoked, {-3, v} another version, {-4} expired.
CHANGE = DEADLINE + f"""
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[2] or redis.call('HEXISTS', KEYS[1], '{ALIAS_OF}') == 1 then
  return {{0}}
end
if redis.call('HEXISTS', KEYS[1], 'r') == 1 then return {{-2}} end
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[3]) then return {{-3, v}} end
if ARGV[4] ~= '' then
  local e = redis.call('HGET', KEYS[1], '{EXPIRES_AT}')
  if e and tonumber(e) <= tonumber(ARGV[4]) then return {{-4}} end
end
for f in string.gmatch(ARGV[6], '%S+') do redis.call('HDEL', KEYS[1], f) end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('RPUSH', KEYS[2], ARGV[5])
return redis.call('HGETALL', KEYS[1])
"""

_UNSET = object()


def _opt(value: int | None) -> str | int:
    return "" if value is None else value


class Lifecycle:
    """KeyStore's roll, edit and alias writes (``store`` is the KeyStore)."""

    def __init__(self, store) -> None:
        self.store = store
        client = store.redis
        self._alias_create = client.register_script(ALIAS_CREATE)
        self._narrow = client.register_script(NARROW)
        self._sync = client.register_script(SYNC)
        self._change = client.register_script(CHANGE)

    async def _record(self, org_id: str, key_id: str) -> KeyRecord | None:
        record = await self.store.get(key_id)
        if record is None or record.org_id != org_id or record.alias_id is not None:
            return None
        if record.version == 0 and await self.store.backfill_records([record]):
            # Written before the activity log: its create (and revoke) events first, as a revoke
            # does, so that the change's event follows them in the key's log.
            return await self._record(org_id, key_id)
        return record

    async def _write(self, *calls) -> list:
        """``calls(client)`` in one confirmed round trip; WriteTooLate if one ran past its deadline."""
        results = await self.store._confirmed(lambda c: self.store._gather(*(lambda call=call: call(c) for call in calls)))
        if any(r == -1 for r in results):
            from gateway.store.keystore import WriteTooLate
            raise WriteTooLate("a roll or edit reached Redis after its deadline")
        return results

    async def _commit(self, before: KeyRecord, after: KeyRecord, event: KeyEvent, now_ms: int | None,
                      deleted: tuple[str, ...]) -> KeyRecord:
        st = self.store
        # Event-log protocol: the org's activity index entry (and the outbox's, and a new expiry's
        # in the finder's index) first, then the change with its event.
        new_expiry = after.expires_at if after.expires_at != before.expires_at else None
        await st._confirmed(lambda c: st._gather(
            lambda: c.zadd(st._org_activity(before.org_id), {f"{before.id}:{after.version}": event.at}),
            lambda: st.events.add_change(c, before.org_id, before.id, after.version, event.at),
            *([lambda: c.zadd(st.finder.expiry, {expiry_member(before.id, new_expiry): new_expiry})]
              if new_expiry is not None else [])))
        fields = shared_fields(after) + [SECRETS, encode_secrets(after.secrets)] if after.rolled_at is not None \
            else shared_fields(after)
        if after.secret_ends_at is not None:
            fields += [SECRET_ENDS_AT, after.secret_ends_at]
        [raw] = await self._write(lambda c: self._change(
            keys=[st._rec(before.id), st._key_log(before.id)],
            args=[st._deadline(), before.org_id, before.version, _opt(now_ms), encode_event(event),
                  " ".join(deleted), *fields], client=c))
        if raw and isinstance(raw[0], int):
            code = raw[0]
            if code == -2:
                raise errors.KeyIsRevoked()
            if code == -3:
                raise errors.VersionMismatch(int(raw[1]))
            if code == -4:
                raise errors.KeyIsExpired()
            raise errors.KeyNotFound()
        if before.expires_at is not None and after.expires_at != before.expires_at:
            await st.finder.forget_expiry(before.id, before.expires_at)  # the expiry it replaced
        return decode_record(before.id, raw)

    async def _narrow_aliases(self, record: KeyRecord, ids: list[str], *, ends: dict[str, int] | None = None,
                              expires_cap: int | None = None, removed: tuple[str, ...] = (),
                              revoked: tuple[int, str] | None = None, limits: tuple[Limit, ...] = ()) -> None:
        if not ids:
            return
        st, ends = self.store, ends or {}

        def one(c, alias_id):
            end = ends.get(alias_id)
            return self._narrow(keys=[st._rec(alias_id)], args=[
                st._deadline(), record.id, _opt(end), _opt(expires_cap), " ".join(removed),
                "" if revoked is None else revoked[0], "" if revoked is None else revoked[1],
                "" if end is None else end + TOMBSTONE_MS, encode_limits(limits)], client=c)
        await self._write(*(lambda c, a=a: one(c, a) for a in ids))

    async def _sync_aliases(self, record: KeyRecord, repair: bool = False) -> None:
        ids = _alias_ids(record)
        if not ids:
            return
        st, fields = self.store, shared_fields(record)
        await self._write(*(lambda c, a=a: self._sync(
            keys=[st._rec(a)], args=[st._deadline(), record.id, record.version, int(repair), *fields], client=c)
            for a in ids))

    # -- roll ----------------------------------------------------------------------------
    async def roll(self, *, org_id: str, key_id: str, grace: str, actor: str, now_ms: int,
                   ack_timeout: float) -> tuple[KeyRecord, str, int] | None:
        """Give the key a new secret; the current one works until the grace period ends (never
        after the key expires), an older one still in its grace period stops now. Returns
        (record, new secret, the previous secret's end), None for no such key of the org;
        KeyIsRevoked, KeyIsExpired, VersionMismatch (a concurrent change: nothing was rolled)."""
        record = await self._record(org_id, key_id)
        if record is None:
            return None
        if record.revoked_at is not None:
            raise errors.KeyIsRevoked()
        if record.status(now_ms) == "expired":
            raise errors.KeyIsExpired()
        secret = keys.generate_key()
        parsed = keys.parse_key(secret)
        previous_end = grace_end(grace, now_ms, record.expires_at)
        secrets = rolled_secrets(record, Secret(parsed.key_id, parsed.prefix, now_ms), previous_end, now_ms)
        ends = {s.id: s.ends_at for s in secrets if s.ends_at is not None}
        # A flagged (leaked, left active) key's mark names the secret that leaked: the new one has
        # not, so the key no longer shows as leaked; the mark stays in the activity log (the
        # api_key.leaked event, and this event's "leak" change).
        after = msgspec.structs.replace(record, prefix=parsed.prefix, secrets=secrets, rolled_at=now_ms, leak=None,
                                        version=record.version + 1, secret_ends_at=ends.get(record.id, record.secret_ends_at))
        changes = {"secret": Change(record.prefix, parsed.prefix), "previous_secret_expires_at": Change(None, previous_end)}
        if record.leak is not None:
            changes["leak"] = Change(_leak_out(record.leak), None)
        event = KeyEvent("api_key.rolled", key_id, org_id, actor, now_ms, after.version, changes)
        st = self.store
        # 1. The new secret's alias: harmless until the answer hands its secret out.
        [created] = await self._write(lambda c: self._alias_create(
            keys=[st._rec(parsed.key_id)], args=[st._deadline(), *encode_alias(after, parsed.digest)], client=c))
        if not created:
            raise RuntimeError("a new secret's id is taken")  # pragma: no cover (2^-95)
        # 2. End the older secrets' aliases: less permissive than the record until step 3.
        await self._narrow_aliases(record, [i for i in ends if i != record.id], ends=ends)
        # 3. The record (its own secret's end with it), if still the version read, with the event.
        done = await self._commit(record, after, event, now_ms, (LEAK,) if record.leak is not None else ())
        await self._sync_aliases(done)  # the older aliases' copies to the new version (prefix)
        await st.broadcast_revocation(all_ids(done), ack_timeout)
        return done, secret, previous_end

    # -- edit ----------------------------------------------------------------------------
    async def edit(self, *, org_id: str, key_id: str, actor: str, now_ms: int, ack_timeout: float,
                   if_version: int | None = None, name: str | None = None, scopes: list[str] | None = None,
                   expires_at: object = _UNSET, limits: object = _UNSET,
                   default_limits: tuple[Limit, ...] = (), broadcast: bool = True) -> KeyRecord | None:
        """Change name, scopes, expiry and limits (a tuple, or None: ``default_limits``, the
        configured default, applies); None for no such key of the org. VersionMismatch when
        ``if_version`` is not the record's version (or a concurrent change won), KeyIsRevoked.
        Answered once every live gateway has dropped the key's ids from its cache. Without
        ``if_version`` a concurrent change is retried (read again, then applied). ``broadcast``
        False: the caller broadcasts the ids (``all_ids``) itself, with other edits' (the finder)."""
        for attempt in range(3):
            try:
                return await self._edit_once(org_id=org_id, key_id=key_id, actor=actor, now_ms=now_ms,
                                             ack_timeout=ack_timeout, if_version=if_version, name=name,
                                             scopes=scopes, expires_at=expires_at, limits=limits,
                                             default_limits=default_limits, broadcast=broadcast)
            except errors.VersionMismatch:
                if if_version is not None or attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _edit_once(self, *, org_id, key_id, actor, now_ms, ack_timeout, if_version, name, scopes,
                         expires_at, limits, default_limits, broadcast=True) -> KeyRecord | None:
        record = await self._record(org_id, key_id)
        if record is None:
            return None
        if record.revoked_at is not None:
            raise errors.KeyIsRevoked()
        if if_version is not None and if_version != record.version:
            raise errors.VersionMismatch(record.version)
        changes: dict[str, Change] = {}
        after = record
        if name is not None and name != record.name:
            changes["name"] = Change(record.name, name)
            after = msgspec.structs.replace(after, name=name)
        if scopes is not None and sorted(scopes) != sorted(record.scopes):
            changes["scopes"] = Change(sorted(record.scopes), sorted(scopes))
            after = msgspec.structs.replace(after, scopes=tuple(scopes))
        if expires_at is not _UNSET and expires_at != record.expires_at:
            changes["expires_at"] = Change(record.expires_at, expires_at)
            after = msgspec.structs.replace(after, expires_at=expires_at)
        if limits is not _UNSET and limits != record.limits:
            changes["limits"] = Change(_limits_out(record.limits), _limits_out(limits))
            after = msgspec.structs.replace(after, limits=limits)
        if not changes:
            return record
        after = msgspec.structs.replace(after, version=record.version + 1)
        removed = tuple(s for s in record.scopes if s not in after.scopes)
        earlier = after.expires_at is not None and (record.expires_at is None or after.expires_at < record.expires_at)
        # What the aliases enforce meanwhile: per window the smaller of before and after, where None
        # (the default applies) counts as the default, so that no step drops a window it enforces.
        old_limits = default_limits if record.limits is None else record.limits
        new_limits = default_limits if after.limits is None else after.limits
        held = narrower(old_limits, new_limits) if "limits" in changes else ()
        narrowed = tuple(held) != narrower(old_limits, ())
        ids = _alias_ids(record)
        if removed or earlier or narrowed:  # narrow the aliases before the record says so
            await self._narrow_aliases(record, ids, expires_cap=after.expires_at if earlier else None, removed=removed,
                                       limits=held if narrowed else ())
        event = KeyEvent("api_key.updated", key_id, org_id, actor, now_ms, after.version, changes)
        try:
            deleted = ((EXPIRES_AT,) if after.expires_at is None else ()) + ((LIMITS,) if after.limits is None else ())
            done = await self._commit(record, after, event, None, deleted)
        except errors.VersionMismatch:
            # Another change won: its sync may have run before this edit narrowed the aliases, so
            # bring them back to the record as it is now (less permissive meanwhile, never more).
            if removed or earlier or narrowed:
                current = await self._record(org_id, key_id)
                if current is not None:
                    await self._sync_aliases(current, repair=True)
            raise
        await self._sync_aliases(done)
        if broadcast:
            await self.store.broadcast_revocation(all_ids(done), ack_timeout)
        return done

    # -- revoke ----------------------------------------------------------------------------
    async def revoke_aliases(self, record: KeyRecord | None, revoked: tuple[int, str], done: set[str]) -> None:
        """Revoke the aliases ``record`` lists that are not in ``done`` (adds them to it)."""
        if record is None:
            return
        ids = [i for i in _alias_ids(record) if i not in done]
        await self._narrow_aliases(record, ids, revoked=revoked)
        done.update(ids)


def _limits_out(limits: tuple[Limit, ...] | None) -> list[dict] | None:
    """Limits as an activity-log event holds them (the admin API's shape; None: the default)."""
    return None if limits is None else [{"window": x.window, "limit": x.limit} for x in limits]


def _leak_out(leak: Leak) -> dict:
    """A leak mark as the activity log holds it (as the api_key.leaked event's "after")."""
    return {"url": leak.url, "source": leak.source, "scanner": leak.scanner, "action": leak.action}


def _alias_ids(record: KeyRecord) -> list[str]:
    return [s.id for s in record.secrets if s.id != record.id]


def all_ids(record: KeyRecord) -> list[str]:
    """The record's id, then its aliases' (what an invalidation names)."""
    return [record.id, *_alias_ids(record)]
