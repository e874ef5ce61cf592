"""Last-used data in Redis: one hash per gateway process, merged on read, folded into a durable base.

Each gateway process (a *node*) keeps its own absolute totals per key and writes the changed ones
with ONE ``HSET`` per flush into its own hash, whatever the number of keys, between two small
scripts in a transaction (``_GUARD``, ``_SETTLE``; on Redis Cluster, the ``_WRITE`` script).
Readers merge: last_used_at = the latest over the base and every node, request_count = the sum.
A flush also raises its keys' entries in the key-event finder's index by last use (one ``ZADD XX
GT`` in its round trip, each key at most hourly per process: gateway.store.finder).
A node's totals only grow, until its hash is folded: then they restart, as the node's
next *generation* (``UsageBuffer.rebase``, ``retire``). Each write carries the node's generation
and its sequence number; the hash keeps the generation (``^``, absent: 0) and the latest sequence
number written (``~``). So a write whose answer was lost and that Redis runs late (redis-py sends
a timed-out command once more; the first may still be queued somewhere) can never set a total
back or count twice: a write of the hash's generation at least as recent as ``~`` holds the
larger totals of its keys and is set as it is; an older one keeps, field by field, the later use
and the larger count; one of an older generation (its totals were folded already, or are sent
again by the node's next generation) is refused. The HSET stays a plain command (a script would
take every field as an argument: about twice the Redis CPU of the flush): ``_GUARD`` moves the hash
aside (``late:<node>``) when the write is older than the hash's latest, so the HSET fills a
scratch hash, and ``_SETTLE`` puts the hash back and merges the scratch into it, or drops it.

A node hash is folded into the base when its node shuts down, and by whoever
notices a node that has not been heard from for ``fold_after_ms``: the admin API when it reads
usage, and the flusher of every gateway and admin API process after its first flush, then every
few minutes (gateway.tasks.usage_flusher). Every fold is a script over a single hash slot (all
usage keys share one hash tag), a chunk at a time: each field is either in its node's hash or in
the base, never both, so nothing is counted twice or lost, on standalone Redis, Sentinel or
Cluster. A folded hash keeps only ``^``, the node's next generation (7 days), so that a late
write of the folded generation is refused instead of recreating the hash.

A node that was folded while it was away learns it from its next liveness beat (which it sends
before writing whenever the last one is older than a minute) together with the sequence number
of its last write that reached Redis and the generation its folded hash admits, and starts again
from what had not, as that generation (``UsageBuffer.rebase``).

Usage history (counts per key, UTC hour and outcome class) rides on the same flush, every
HISTORY_EVERY seconds (gateway.usage.UsageBuffer.history_due): ONE more command, the
``_HIST_WRITE`` script, queued with the HSET (and the WAIT, when replicas must confirm). It writes
this node's absolute counts of the hour, one field per key, into the node's hash of that hour
(``hist:<node>:<hour>``), and of the keys' UTC days into its hash of the day
(``histday:<node>:<day>``): an EVAL, an HMGET and an HSET per hash whatever the number of keys;
the node's first write of a hash also sets its expiry and lists it in ``hist:open`` (or
``histday:open``). A write whose answer was lost and that Redis runs after newer ones (the hash's
``^`` field holds the latest write's sequence number) only raises counts, class by class: it
cannot set a newer count back. Once the hour is over and all of it has landed, the node folds that hash
(``_HIST_FOLD``, a chunk per call) into the per-key hour buckets (a hash per key and UTC day,
field = hour): one HSETNX per key (HGET and HSET when another node counted the key that hour).
Once the day is over and its hours folded, the node folds its day hash into the per-key day
buckets (a hash per key and 32-day page, field = day, expiring ``daily_days`` after the day),
and sets the expiry of the key's hour bucket of that day (``hourly_days`` after the day: a
constant per key and day): HSETNX and two PEXPIREAT per key and day. So an hour bucket has no
expiry until its day is folded. Each field is either in the node's hash or in the buckets, never
both (as for the last-used fold), and a folded hash keeps only its ``~`` marker (7 days), so a
write of that node and hour (or day) that Redis runs late is refused instead of counting twice.
Reads of hours add the open hour hashes, reads of days the open day hashes. Hashes of dead nodes
are folded by whoever finds them, like their last-used hashes (hours first; a day once none of
its hours is open). Same hash tag as every usage key: single-slot on Cluster.
"""

from __future__ import annotations

from collections import OrderedDict

from redis.asyncio.cluster import RedisCluster

from gateway.keyevents import index_due, remember
from gateway.store.finder import lastused_index
from gateway.history import DAY, DAY_MS, HOUR, Window, day_slot, hour_slot
from gateway.store.codec import SEQ_FIELD, decode_counts, decode_usage, encode_counts, encode_usage, merge_usage

INDEX_STEP_MS = 3_600_000  # a key's entry in the finder's index by last use is raised at most hourly per process
INDEX_MEMORY = 200_000  # keys whose last raise a process remembers before it forgets the older ones
FOLD_AFTER_MS = 600_000  # a node not heard from for 10 minutes is folded by whoever notices
FOLD_CHUNK = 1000  # fields per fold script call: 3-4 ms of Redis time (measured here)
FOLDED_TTL_MS = 7 * 86_400_000  # how long a folded node's last sequence number is remembered
HOURLY_DAYS, DAILY_DAYS = 90, 400  # default retention of hour and day buckets (--usage-*-days)

_NOW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
"""

# codec.usage_bucket, in Lua.
_BUCKET = """
local function bucket(id)
  if #id == 20 and string.sub(id, 1, 4) == 'key_' then
    return string.sub(id, 19, 20) .. (string.byte(id, 18) % 4), string.sub(id, 5, 18)
  end
  return '_', id
end
"""

# KEYS: nodes, folded, the node's hash. ARGV: node id, "1" if this node has beaten before.
# Returns -1 (carry on), or {the sequence number of the node's last write that was folded while
# it was away (0: unknown), the generation its folded hash admits ("^")}. Either way the node is
# registered again.
_BEAT = _NOW + """
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
if known or ARGV[2] ~= '1' then return -1 end
local seq = redis.call('HGET', KEYS[2], ARGV[1])
if seq then redis.call('HDEL', KEYS[2], ARGV[1]) end
return {tonumber(seq or '0'), tonumber(redis.call('HGET', KEYS[3], '^') or '0')}
"""

# KEYS: nodes, folded, the node's hash. ARGV: node id, minimum idle ms ("" = fold now), chunk
# size, base key prefix, "1" to remember the node's last sequence number, marker ttl ms.
# Moves up to one chunk of fields into the base; returns -1 if the node is alive, 0 once the
# node hash is folded, else the number of fields moved (call again). A folded hash keeps only
# "^", the node's next generation (the one it starts when it learns of the fold: rebase or
# retire), for the marker ttl: a late write of the folded generation is refused by _WRITE.
_FOLD = _NOW + _BUCKET + """
if ARGV[2] ~= '' then
  local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if seen and tonumber(seen) > now - tonumber(ARGV[2]) then return -1 end
end
local limit = tonumber(ARGV[3])
local items = redis.call('HRANDFIELD', KEYS[3], limit + 2, 'WITHVALUES')
local fields = {}
for i = 1, #items, 2 do
  local f = items[i]
  if f ~= '~' and f ~= '^' and #fields < limit then
    fields[#fields + 1] = f
    local last, n = string.match(items[i + 1], '^(%d+):(%d+)$')
    if last then
      last, n = tonumber(last), tonumber(n)
      local b, sub = bucket(f)
      local cur = redis.call('HGET', ARGV[4] .. b, sub)
      if cur then
        local l0, n0 = string.match(cur, '^(%d+):(%d+)$')
        if l0 then
          if tonumber(l0) > last then last = tonumber(l0) end
          n = n + tonumber(n0)
        end
      end
      redis.call('HSET', ARGV[4] .. b, sub, string.format('%d:%d', last, n))
    end
  end
end
if #fields > 0 then redis.call('HDEL', KEYS[3], unpack(fields)) end
local state = redis.call('HMGET', KEYS[3], '~', '^')
local seq = state[1]
if redis.call('HLEN', KEYS[3]) > (seq and 1 or 0) + (state[2] and 1 or 0) then return #fields end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], '^', tonumber(state[2] or '0') + 1)
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]))
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[2], ARGV[1], seq or '0')
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]))
end
return 0
"""

# A late write's fields into a node's hash (``given``: key id, "<last used ms>:<count>", ...):
# each keeps the later use and the larger count of the two (a field the hash lacks is set as it
# is), so a late write can neither set a total back nor add to it. One HMGET, at most one HSET.
_MERGE_LATE = """
local function merge_late(hash, given)
  local names = {}
  for j = 1, #given, 2 do names[#names + 1] = given[j] end
  local old = redis.call('HMGET', hash, unpack(names))
  local items = {}
  for j = 1, #names do
    local v = given[2 * j]
    if old[j] then
      local l0, n0 = string.match(old[j], '^(%d+):(%d+)$')
      local l1, n1 = string.match(v, '^(%d+):(%d+)$')
      if l0 and l1 then
        l0, n0, l1, n1 = tonumber(l0), tonumber(n0), tonumber(l1), tonumber(n1)
        if l0 >= l1 and n0 >= n1 then
          v = nil
        else
          v = string.format('%d:%d', math.max(l0, l1), math.max(n0, n1))
        end
      end
    end
    if v then items[#items + 1] = names[j]; items[#items + 1] = v end
  end
  if #items > 0 then redis.call('HSET', hash, unpack(items)) end
end
"""

# KEYS: the node's hash. ARGV: the node's generation, the write's sequence number, then key id,
# "<last used ms>:<count>" pairs (the node's absolute totals of that generation). The hash keeps
# its generation in "^" (absent: 0) and the latest sequence number written in "~". Within a
# generation a node's totals only grow, and each write carries them as they were when it was
# drained: a write at least as recent as "~" holds the later use and the larger count of each of
# its keys, and is set as it is (an HMGET and an HSET). An older one is a write whose answer was
# lost and that Redis runs late, after newer ones: each of its fields keeps the later use and the
# larger count, so it can neither set a total back nor add to it. A write of an older generation
# than "^" is refused (its totals were folded into the base, or are sent again by the newer
# generation): so a late write never recreates a folded hash. A newer generation (the node
# learned its hash was folded) takes the hash over: its marker's expiry goes. Returns 1 if
# written, 0 if refused.
_WRITE = _MERGE_LATE + """
local state = redis.call('HMGET', KEYS[1], '^', '~')
local gen, have = tonumber(ARGV[1]), tonumber(state[1] or '0')
if gen < have then return 0 end
if gen > have then
  redis.call('PERSIST', KEYS[1])
  redis.call('HSET', KEYS[1], '^', ARGV[1])
elseif tonumber(ARGV[2]) < tonumber(state[2] or '0') then
  local late = {}
  for j = 3, #ARGV do late[#late + 1] = ARGV[j] end
  merge_late(KEYS[1], late)
  return 1
end
redis.call('HSET', KEYS[1], '~', ARGV[2], unpack(ARGV, 3))
return 1
"""

# The same, as a plain HSET between these two scripts in one MULTI/EXEC (the HSET: "~", the
# sequence number, then the key id, value pairs). KEYS: the node's hash, its aside key. ARGV: the
# generation, the sequence number. _GUARD: a write of an older generation than "^", or of the
# same and older than "~", moves the hash aside (RENAME) so that the HSET fills a scratch hash;
# a newer generation takes the hash over. _SETTLE (ARGV: the generation): if the hash was moved
# aside, the scratch (the late write) is dropped and the hash put back, then, if the generation
# is the hash's, each of the scratch's fields keeps the later use and the larger count. Returns
# 1 if written, 0 if refused. A write at least as recent as "~" costs the HSET and two small
# script calls.
_GUARD = """
local state = redis.call('HMGET', KEYS[1], '^', '~')
local gen, have = tonumber(ARGV[1]), tonumber(state[1] or '0')
if gen < have or (gen == have and tonumber(ARGV[2]) < tonumber(state[2] or '0')) then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 0
end
if gen > have then
  redis.call('PERSIST', KEYS[1])
  redis.call('HSET', KEYS[1], '^', ARGV[1])
end
return 1
"""

_SETTLE = _MERGE_LATE + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 1 end
local late = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('RENAME', KEYS[2], KEYS[1])
if tonumber(ARGV[1]) ~= tonumber(redis.call('HGET', KEYS[1], '^') or '0') then return 0 end
local fields = {}
for j = 1, #late, 2 do
  if late[j] ~= '~' then fields[#fields + 1] = late[j]; fields[#fields + 1] = late[j + 1] end
end
if #fields == 0 then return 1 end
merge_late(KEYS[1], fields)
return 1
"""

# KEYS: the open-hours index, the open-days index, then one node hash (of an hour or a day) per
# hash written. ARGV: node id, ttl ms, the write's sequence number (UsageBuffer.drain_history:
# grows with each write the node drains), then per hash: its index (1 or 2), hour or day, "1" if
# the write sets the hash up (its expiry and index entry: not known to the node to have landed
# yet), number of keys n, n x (key id, counts "a:b:c:d:e"). A folded hash (its "~" marker) is
# not written again. A hash's "^" field holds the latest sequence number written into it. A
# node's counts only grow and each write carries them as they were when it was drained, so a
# write at least as recent as "^" holds the larger count of every class of its fields: it is
# written as it is (an HMGET and an HSET). An older one is a write whose answer was lost and that
# Redis runs late, after newer ones (once or more): each of its fields keeps, class by class,
# the larger of the two counts, so it can neither set a count back nor add to it. Returns the
# number of hashes written.
_HIST_WRITE = """
local FIVE = '^(%d+):(%d+):(%d+):(%d+):(%d+)$'
local function larger(old, new)
  local a1, a2, a3, a4, a5 = string.match(old, FIVE)
  local b1, b2, b3, b4, b5 = string.match(new, FIVE)
  if a1 and b1 then  -- the usual case, and cheap: one of the two holds the larger of every class
    a1, a2, a3, a4, a5 = tonumber(a1), tonumber(a2), tonumber(a3), tonumber(a4), tonumber(a5)
    b1, b2, b3, b4, b5 = tonumber(b1), tonumber(b2), tonumber(b3), tonumber(b4), tonumber(b5)
    if b1 >= a1 and b2 >= a2 and b3 >= a3 and b4 >= a4 and b5 >= a5 then return new end
    if a1 >= b1 and a2 >= b2 and a3 >= b3 and a4 >= b4 and a5 >= b5 then return old end
  end
  local a, b, out = {}, {}, {}
  for n in string.gmatch(old, '%d+') do a[#a + 1] = tonumber(n) end
  for n in string.gmatch(new, '%d+') do b[#b + 1] = tonumber(n) end
  for j = 1, math.max(#a, #b) do out[j] = string.format('%d', math.max(a[j] or 0, b[j] or 0)) end
  return table.concat(out, ':')
end
local seq = tonumber(ARGV[3])
local i, written = 4, 0
for k = 3, #KEYS do
  local index, at, fresh, n = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local state = redis.call('HMGET', KEYS[k], '~', '^')
  if n > 0 and not state[1] then
    if seq >= tonumber(state[2] or '0') then
      redis.call('HSET', KEYS[k], '^', ARGV[3], unpack(ARGV, i + 4, i + 3 + 2 * n))
    else
      local fields = {}
      for j = 1, n do fields[j] = ARGV[i + 2 + 2 * j] end
      local old = redis.call('HMGET', KEYS[k], unpack(fields))
      local items = {}
      for j = 1, n do
        local v = ARGV[i + 3 + 2 * j]
        if old[j] and old[j] ~= v then v = larger(old[j], v) end
        if v ~= old[j] then items[#items + 1] = fields[j]; items[#items + 1] = v end
      end
      if #items > 0 then redis.call('HSET', KEYS[k], unpack(items)) end
    end
    if fresh == '1' then
      redis.call('PEXPIRE', KEYS[k], ARGV[2])
      redis.call('ZADD', KEYS[index], at, ARGV[1] .. ':' .. at)
    end
    written = written + 1
  end
  i = i + 4 + 2 * n
end
return written
"""

# KEYS: nodes, the open index (of hours or days), the node's hash. ARGV: node id, minimum idle
# ms ("" = fold now), chunk size, hour or day, bucket key format (%s = key id), bucket field,
# the bucket's expiry (ms since the epoch) set when a fold adds its field ("" = none), a second
# hash per key to expire (format, "" = none) and when, marker ttl ms. Moves up to one chunk of
# fields into the per-key buckets; returns -1 if the node is alive, 0 once the hash is folded,
# else the number of fields moved. Per field: one HSETNX when the bucket has no count of it yet
# (one node an hour), else HGET and HSET (the sum); plus the expiries asked for.
_HIST_FOLD = _NOW + """
if ARGV[2] ~= '' then
  local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if seen and tonumber(seen) > now - tonumber(ARGV[2]) then return -1 end
end
local bucket, field, expire_at, also, also_at = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local function add(key, counts)
  if redis.call('HSETNX', key, field, counts) == 1 then
    if expire_at ~= '' then redis.call('PEXPIREAT', key, expire_at) end
    return
  end
  local old = {}
  for n in string.gmatch(redis.call('HGET', key, field) or '', '%d+') do old[#old + 1] = tonumber(n) end
  local sum, i = {}, 0
  for n in string.gmatch(counts, '%d+') do
    i = i + 1
    sum[i] = string.format('%d', (old[i] or 0) + tonumber(n))
  end
  redis.call('HSET', key, field, table.concat(sum, ':'))
end
local limit = tonumber(ARGV[3])
local items = redis.call('HRANDFIELD', KEYS[3], limit + 2, 'WITHVALUES')
local fields = {}
for i = 1, #items, 2 do
  local f = items[i]
  if f ~= '~' and f ~= '^' and #fields < limit then
    fields[#fields + 1] = f
    add(string.format(bucket, f), items[i + 1])
    if also ~= '' then redis.call('PEXPIREAT', string.format(also, f), also_at) end
  end
end
if #fields > 0 then redis.call('HDEL', KEYS[3], unpack(fields)) end
local marks = redis.call('HEXISTS', KEYS[3], '~') + redis.call('HEXISTS', KEYS[3], '^')
if redis.call('HLEN', KEYS[3]) > marks then return #fields end
redis.call('HDEL', KEYS[3], '^')
redis.call('HSET', KEYS[3], '~', '1')
redis.call('PEXPIRE', KEYS[3], ARGV[10])
redis.call('ZREM', KEYS[2], ARGV[1] .. ':' .. ARGV[4])
return 0
"""

# KEYS: the open index (of hours or days). ARGV: first, last hour or day, node hash prefix, key
# id, then the bucket hashes to read. Returns {{member, counts, ...} of the open hashes of those
# hours or days that hold the key, then HGETALL of each bucket hash}: one consistent snapshot (a fold running
# beside it moves a field from one to the other atomically).
_HIST_READ = """
local open = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])) do
  local v = redis.call('HGET', ARGV[3] .. member, ARGV[4])
  if v then open[#open + 1] = member; open[#open + 1] = v end
end
local out = {open}
for i = 5, #ARGV do out[#out + 1] = redis.call('HGETALL', ARGV[i]) end
return out
"""

# KEYS: nodes. ARGV: node key prefix, base key prefix, key ids...
# Returns {server ms, {node, last beat, ...}, base values, one array of values per node}: one
# consistent snapshot, so a fold running beside it can never make a use count twice or vanish.
_READ = _NOW + _BUCKET + """
local nodes = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local base = {}
for i = 3, #ARGV do
  local b, sub = bucket(ARGV[i])
  base[i - 2] = redis.call('HGET', ARGV[2] .. b, sub)
end
local out = {now, nodes, base}
if #ARGV > 2 then
  for j = 1, #nodes, 2 do
    out[#out + 1] = redis.call('HMGET', ARGV[1] .. nodes[j], unpack(ARGV, 3))
  end
end
return out
"""


async def _one(call) -> list:
    """One command, run (client) or queued (pipeline), as the list ``KeyStore._confirmed`` expects."""
    return [await call]


class UsageLedger:
    """Per-node usage hashes, their liveness beats, merged reads and folds."""

    def __init__(self, client, prefix: str, confirmed=None) -> None:
        self.redis = client
        # KeyStore._confirmed: the beat and the writes are confirmed by a replica like a key
        # write, so a flush counted as done survives a failover (else it fails and is retried).
        self._confirmed = confirmed or (lambda steps: steps(client))
        tag = f"{prefix}:usage:{{{prefix}}}"  # one hash tag: every fold and read is single-slot
        self.nodes = f"{tag}:nodes"
        self.folded = f"{tag}:folded"
        self.node_prefix = f"{tag}:node:"
        self.late_prefix = f"{tag}:late:"  # + node id: its hash, moved aside while a late write runs
        self.base_prefix = f"{tag}:base:"
        self.lastused = lastused_index(prefix)  # the finder's index by last use, raised by the writes
        self._indexed: OrderedDict[str, int] = OrderedDict()  # key id -> the last use this process raised it to
        self.hist_prefix = f"{tag}:hist:"  # + node id + ":" + hour index: a node's counts of an hour
        self.hist_open = f"{tag}:hist:open"  # "<node id>:<hour>" of the hashes not folded yet, by hour
        self.histday_prefix = f"{tag}:histday:"  # + node id + ":" + day index: a node's counts of a day
        self.histday_open = f"{tag}:histday:open"  # "<node id>:<day>" of the day hashes not folded yet
        self.hour_prefix = f"{tag}:hour:"  # + key id + ":" + day index
        self.day_prefix = f"{tag}:day:"  # + key id + ":" + 32-day page index
        self.hourly_days, self.daily_days = HOURLY_DAYS, DAILY_DAYS
        self._hist_fold = client.register_script(_HIST_FOLD)
        self._hist_read = client.register_script(_HIST_READ)
        self.fold_after_ms = FOLD_AFTER_MS
        self._beat = client.register_script(_BEAT)
        self._fold = client.register_script(_FOLD)
        self._read = client.register_script(_READ)

    def retain(self, hourly_days: int, daily_days: int) -> None:
        """How long the buckets this process writes are kept (--usage-hourly-days, --usage-daily-days)."""
        self.hourly_days, self.daily_days = hourly_days, daily_days

    def node_key(self, node_id: str) -> str:
        return self.node_prefix + node_id

    def late_key(self, node_id: str) -> str:
        return self.late_prefix + node_id

    async def beat(self, node_id: str, registered: bool) -> tuple[int, int] | None:
        """Say this node is alive. None, or (folded while away) the seq of its last write that
        landed and the generation its hash admits now (``UsageBuffer.rebase``)."""
        [landed] = await self._confirmed(lambda c: _one(self._beat(
            keys=[self.nodes, self.folded, self.node_key(node_id)], args=[node_id, "1" if registered else "0"],
            client=c)))
        return None if landed == -1 else (int(landed[0]), int(landed[1]))

    async def generation(self, node_id: str) -> int:
        """The generation a node's hash admits (``^``): after the node's own fold, the next one."""
        return int(await self.redis.hget(self.node_key(node_id), "^") or 0)

    async def write(self, node_id: str, seq: int, values: dict[str, tuple[int, int]], history=None,
                    gen: int = 0) -> bool:
        """ONE ``HSET`` (in its MULTI/EXEC with ``_GUARD`` and ``_SETTLE``; on Cluster, the
        ``_WRITE`` script): this node's absolute totals for ``values``, of its generation ``gen``,
        with the write's sequence number; ONE more command (a script) for a ``history`` write
        (gateway.usage.HistoryWrite), when given; and ONE ``ZADD XX GT`` of the keys due a raise
        in the key-event finder's index by last use (hourly per key), all in one round trip. False if the totals were
        refused: the node's hash was folded into the base (its generation is older than the hash's)."""
        calls, raise_index = [], {}
        cluster = isinstance(self.redis, RedisCluster)
        if values:
            node, aside = self.node_key(node_id), self.late_key(node_id)
            items: list[object] = [SEQ_FIELD, seq]
            for key_id, (last_ms, count) in values.items():
                items += (key_id, encode_usage(last_ms, count))

            async def guarded(c) -> None:  # queued on a pipeline (of Redis or Sentinel's master)
                c.execute_command("MULTI")
                c.eval(_GUARD, 2, node, aside, gen, seq)
                c.hset(node, items=items)
                c.eval(_SETTLE, 2, node, aside, gen)
                c.execute_command("EXEC")

            # (A cluster client cannot send MULTI inside the flush's pipeline: one script there.
            # EVAL, not a registered script, for the reason below.)
            calls.append((lambda c: c.eval(_WRITE, 1, node, gen, seq, *items[2:])) if cluster else guarded)
            # The finder's index by last use (gateway.store.finder), in the same round trip: only
            # keys that are there (a revoked key is not added back), only ever later, and only
            # keys this process has not raised within INDEX_STEP_MS (the finder counts in days and
            # reads the true last use from the ledger: an index an hour behind only wakes it early).
            # A ZADD of all 2,048 keys of a flush cost 1.1-1.3 ms of Redis time, 5 times the flush.
            raise_index = index_due(values, self._indexed, INDEX_STEP_MS)
            if raise_index:
                calls.append(lambda c: c.zadd(self.lastused, raise_index, xx=True, gt=True))
        if history is not None and len(history):
            keys, args = [self.hist_open, self.histday_open], [node_id, FOLDED_TTL_MS, history.seq]
            for index, kind, prefix, by in ((1, "h", self.hist_prefix, history.hours),
                                            (2, "d", self.histday_prefix, history.days)):
                for at, counts in by.items():
                    if not counts:
                        continue
                    keys.append(f"{prefix}{node_id}:{at}")
                    args += (index, at, "1" if history.is_fresh(kind, at) else "0", len(counts))
                    for key_id, classes in counts.items():
                        args += (key_id, encode_counts(classes))
            # EVAL, not a registered script: in a pipeline that would add a SCRIPT EXISTS per flush
            # (Redis caches the compiled script by its digest either way).
            calls.append(lambda c: c.eval(_HIST_WRITE, len(keys), *keys, *args))
        if not calls:
            return True
        results = await self._confirmed(lambda c: self._together(c, calls))
        if not values:
            return True
        if raise_index:
            remember(self._indexed, raise_index, INDEX_MEMORY)  # (the least recently raised forgotten)
        if cluster:
            return bool(results[0])
        # The pipeline's answers: MULTI, three QUEUED, then EXEC's: the guard's, the HSET's and
        # the settle's (a command that failed inside the transaction is an error in that list).
        for answer in results[4]:
            if isinstance(answer, Exception):
                raise answer
        return bool(results[4][2])

    async def _together(self, client, calls) -> list:
        """``calls`` sent in one round trip: queued on the caller's pipeline (with its WAIT), or
        in a pipeline of their own, so that both go out in one write."""
        if client is not self.redis or isinstance(client, RedisCluster):
            # (a cluster pipeline is one round trip per node anyway; these keys share one slot)
            return [await call(client) for call in calls]
        async with client.pipeline(transaction=False) as pipe:
            for call in calls:
                await call(pipe)
            return await pipe.execute()

    async def history(self, key_id: str, win: Window) -> dict[int, list[int]]:
        """Counts per bucket index of ``win`` (missing buckets absent): the per-key buckets and the
        node hashes (of hours, or of days) not folded yet, in one script call."""
        if win.granularity == HOUR:
            prefix, slot, index, node_prefix = self.hour_prefix, hour_slot, self.hist_open, self.hist_prefix
        else:
            assert win.granularity == DAY
            prefix, slot, index, node_prefix = self.day_prefix, day_slot, self.histday_open, self.histday_prefix
        slots = [slot(i) for i in range(win.first, win.last + 1)]
        hashes = sorted({h for h, _ in slots})
        still_open, *raw = await self._hist_read(
            keys=[index],
            args=[win.first, win.last, node_prefix, key_id, *(f"{prefix}{key_id}:{h}" for h in hashes)])
        by_hash = {h: dict(zip(flat[::2], flat[1::2], strict=True)) for h, flat in zip(hashes, raw, strict=True)}
        found: dict[int, list[int]] = {}
        for index, (h, field) in zip(range(win.first, win.last + 1), slots, strict=True):
            counts = decode_counts(by_hash[h].get(str(field).encode()))
            if counts is not None:
                found[index] = counts
        for member, raw_counts in zip(still_open[::2], still_open[1::2], strict=True):
            counts = decode_counts(raw_counts)
            if counts is not None:
                at = int(member.rsplit(b":", 1)[1])
                found[at] = [a + b for a, b in zip(found.get(at, [0] * len(counts)), counts, strict=True)]
        return found

    async def fold_hour(self, node_id: str, hour: int, *, only_if_idle: bool = False) -> bool:
        """Fold a node's hash of ``hour`` into the per-key hour buckets, a chunk per call; True
        once done (``only_if_idle``: only while the node is not heard from, as ``fold``; False if
        it is)."""
        while (moved := await self._fold_chunk_of("h", node_id, hour, only_if_idle)) > 0:
            pass
        return moved == 0

    async def fold_day(self, node_id: str, day: int, *, only_if_idle: bool = False) -> bool:
        """Fold a node's hash of ``day`` into the per-key day buckets (once its hours are folded:
        this also sets the expiry of the keys' hour buckets of that day), as ``fold_hour``."""
        while (moved := await self._fold_chunk_of("d", node_id, day, only_if_idle)) > 0:
            pass
        return moved == 0

    async def _fold_chunk_of(self, kind: str, node_id: str, at: int, only_if_idle: bool) -> int:
        """One chunk of a node's hour (kind "h") or day ("d") hash: -1: the node is alive; 0: the
        hash is folded; else the number of fields moved. An hour is one HSETNX per key (the hour
        buckets get their expiry, a constant per key and day, from the day's fold); a day one
        HSETNX, the day bucket's expiry when its field is new, and the hour bucket's expiry."""
        if kind == "h":
            day, field = hour_slot(at)
            index, node_hash = self.hist_open, f"{self.hist_prefix}{node_id}:{at}"
            bucket, expire_at, also, also_at = f"{self.hour_prefix}%s:{day}", "", "", ""
        else:
            page, field = day_slot(at)
            index, node_hash = self.histday_open, f"{self.histday_prefix}{node_id}:{at}"
            bucket, expire_at = f"{self.day_prefix}%s:{page}", (at + 1) * DAY_MS + self.daily_days * DAY_MS
            also, also_at = f"{self.hour_prefix}%s:{at}", (at + 1) * DAY_MS + self.hourly_days * DAY_MS
        return await self._hist_fold(
            keys=[self.nodes, index, node_hash],
            args=[node_id, self.fold_after_ms if only_if_idle else "", FOLD_CHUNK, at, bucket, field,
                  expire_at, also, also_at, FOLDED_TTL_MS])

    async def fold_dead_history(self, *, max_chunks: int | None = None) -> bool:
        """Fold the open hour hashes, then day hashes, of nodes not heard from for
        ``fold_after_ms`` (or gone), at most ``max_chunks`` chunks in all; True if none is left
        to do now. A node's day waits while an hour of it is open (its fold expires the hours)."""
        budget = max_chunks
        open_hours: set[tuple[str, int]] = set()
        for kind, index in (("h", self.hist_open), ("d", self.histday_open)):
            for member in await self.redis.zrange(index, 0, -1):
                node_id, _, at = member.decode().rpartition(":")
                if kind == "d" and any((node_id, h) in open_hours for h in range(int(at) * 24, int(at) * 24 + 24)):
                    continue
                while True:
                    if budget is not None:
                        if budget <= 0:
                            return False
                        budget -= 1
                    if (moved := await self._fold_chunk_of(kind, node_id, int(at), True)) <= 0:
                        break  # folded, or the node is alive (it folds its own)
                if kind == "h" and moved < 0:
                    open_hours.add((node_id, int(at)))
        return True

    async def read(self, key_ids: list[str]) -> tuple[dict[str, tuple[int | None, int]], list[str]]:
        """Merged (last_used_at, request_count) per key, and the nodes that look dead."""
        now, nodes, base, *per_node = await self._read(
            keys=[self.nodes], args=[self.node_prefix, self.base_prefix, *key_ids])
        dead = [n.decode() for n, seen in zip(nodes[::2], nodes[1::2], strict=True)
                if float(seen) <= now - self.fold_after_ms]
        merged = {
            key_id: merge_usage([decode_usage(base[i]), *(decode_usage(col[i]) for col in per_node)])
            for i, key_id in enumerate(key_ids)
        }
        return merged, dead

    async def fold(self, node_id: str, *, only_if_idle: bool = False, max_chunks: int | None = None) -> bool:
        """Fold a node's hash into the base, a chunk per script call; True once it is gone.

        ``only_if_idle``: only while the node has not been heard from for ``fold_after_ms``
        (checked atomically with each chunk); otherwise unconditionally (a node folding itself
        at shutdown).
        """
        chunks = 0
        while max_chunks is None or chunks < max_chunks:
            moved = await self._fold_chunk(node_id, only_if_idle)
            if moved <= 0:
                return moved == 0
            chunks += 1
        return False

    async def _fold_chunk(self, node_id: str, only_if_idle: bool) -> int:
        """-1: the node is alive; 0: its hash is gone; else the number of fields moved."""
        return await self._fold(
            keys=[self.nodes, self.folded, self.node_key(node_id)],
            args=[node_id, self.fold_after_ms if only_if_idle else "", FOLD_CHUNK, self.base_prefix,
                  "1" if only_if_idle else "0", FOLDED_TTL_MS],
        )

    async def dead_nodes(self) -> list[str]:
        """Nodes not heard from for ``fold_after_ms`` (by the Redis server's clock)."""
        _, dead = await self.read([])
        return dead

    async def fold_dead(self, *, max_chunks: int | None = None) -> bool:
        """Fold the hashes of dead nodes, at most ``max_chunks`` chunks in all; True if none is left."""
        budget = max_chunks
        for node_id in await self.dead_nodes():
            while True:
                if budget is not None:
                    if budget <= 0:
                        return False
                    budget -= 1
                if await self._fold_chunk(node_id, True) <= 0:
                    break  # gone, or alive after all
        return True
