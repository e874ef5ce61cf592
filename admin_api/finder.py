"""The key-event finder (issue 17): a task of each admin API process that finds keys crossing a
line (7 days and 1 day before their expiry, expired, unused for their org's ``unused_days``),
emits one event per finding to the org event outbox, and expires unused keys for orgs that set
``expire_unused_days`` (docs/key-events.md).

Each tick reads windows of the two indexes (gateway.store.finder), never every key: the entries
that crossed a line since the previous tick (its watermark, less a slack for entries written a
little late). One process at a time runs a tick (a lock in Redis); each finding is claimed by an
atomic marker and kept pending until emitted, so it is emitted once, or, if the process dies
between the emit and clearing it, once more by the next tick (at least once, never lost).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Callable

from gateway import errors
from gateway.events import EXPIRED, EXPIRING, UNUSED, FeedEntry
from gateway.keyevents import (DAY_MS, EXPIRY_LINES, UNUSED_WINDOW_MS, days_left, expiry_event_id, passed_line,
                               unused_event_id, unused_plan, window)
from gateway.model import KeyRecord, rfc3339
from gateway.orgsettings import OrgSettings
from gateway.store import FAULTS, KeyStore
from gateway.store.events import found_entry
from gateway.store.finder import parse_expiry_member
from gateway.store.lifecycle import all_ids

log = logging.getLogger("admin_api.finder")

UNUSED_MARK = "unused"  # the watermark of the index by last use (the expiry lines' are their names)
SLACK_MS = 60_000  # each window reaches this far below the previous tick's head (entries written late)
BATCH = 500  # index entries per round trip
DUE_BATCHES = 20  # batches of due keys looked at per tick at most
LOCK_MS = 30_000  # the tick lock's lease (renewed between batches): a process that dies holding it blocks
# the others this long
TICK_BUDGET_S = 20.0  # a tick stops after this long (between batches); the next one goes on from there
FOUND_CAP = 5_000  # findings a tick emits at most (then it stops after the batch; the next goes on)
RETRY_MS = 60_000  # a key whose auto-expiry failed is looked at again this much later
BAD_SETTINGS_RETRY_MS = 3_600_000  # an org whose stored settings do not decode: its keys an hour later
AUTO_EXPIRY_ACTOR = "system:unused"


class KeyEventFinder:
    """One admin API process's finder. ``clock``: the wall clock (seconds; injected in tests);
    ``metrics``: AdminMetrics; ``ack_timeout``: how long an auto-expiry waits for the gateways."""

    def __init__(self, store: KeyStore, clock: Callable[[], float], metrics, ack_timeout: float) -> None:
        self.store = store
        self.finder = store.finder
        self.clock = clock
        self.metrics = metrics
        self.ack_timeout = ack_timeout
        self.backfilled = False
        self.budget = TICK_BUDGET_S
        self.found_cap = FOUND_CAP
        self._token = ""
        self._deadline = 0.0
        self._found = 0

    async def run(self, interval: float) -> None:
        """Tick every ``interval`` seconds (the first after one interval); a Redis fault skips a tick."""
        while True:
            await asyncio.sleep(interval)
            try:
                ran = await self.tick()
            except FAULTS as exc:
                self.metrics.finder_ticks.labels("error").inc()
                log.warning("key-event finder: tick failed (%s); next in %.0f s", type(exc).__name__, interval)
                continue
            except Exception:  # a bug must not stop the finder for the process's life
                self.metrics.finder_ticks.labels("error").inc()
                log.exception("key-event finder: tick failed; next in %.0f s", interval)
                continue
            self.metrics.finder_ticks.labels("ok" if ran else "skipped").inc()

    async def tick(self) -> bool:
        """One tick, if no other process is running one: True if it ran. Between batches it renews
        its lock (and stops if another process has it now) and stops once it has run ``budget``
        seconds or emitted ``found_cap`` findings: each window's watermark is then where it got
        to, so the next tick goes on from there."""
        now = int(self.clock() * 1000)
        token = await self.finder.acquire(LOCK_MS)
        if token is None:
            return False
        self._token, self._found = token, 0
        self._deadline = asyncio.get_running_loop().time() + self.budget
        marks: dict[str, int] = {}
        try:
            if not self.backfilled:
                indexed = await self.finder.backfill()
                if indexed:
                    log.info("key-event finder: indexed %d keys created before the finder's indexes", indexed)
                self.backfilled = True
            await self._settle()
            await self._go_on()
            before = await self.finder.watermarks()
            for line, ahead in EXPIRY_LINES:
                low, high = window(before.get(line), now + ahead, SLACK_MS, now - SLACK_MS)
                async for batch in self.finder.window(self.finder.expiry, low, high, BATCH):
                    await self._expiry_batch(line, batch, now)
                    marks[line] = batch[-1][1]
                    await self._go_on()
                marks[line] = now + ahead
            low, high = window(before.get(UNUSED_MARK), now - UNUSED_WINDOW_MS, SLACK_MS, None)
            async for batch in self.finder.window(self.finder.lastused, low, high, BATCH):
                await self._unused_batch([m.decode() for m, _ in batch], now)
                marks[UNUSED_MARK] = batch[-1][1]
                await self._go_on()
            marks[UNUSED_MARK] = now - UNUSED_WINDOW_MS
            for _ in range(DUE_BATCHES):
                due = await self.finder.due_now(now, BATCH)
                if not due:
                    break
                await self._unused_batch(due, now)
                await self._go_on()
            await self._rescan(now)
            await self.finder.prune(now)
        except _Stop as stop:
            log.info("key-event finder: tick stopped (%s); the next one goes on", stop)
        finally:
            try:
                await self.finder.set_watermarks(marks)
            finally:
                await self.finder.release(token)
        return True

    async def _go_on(self) -> None:
        """Between batches: renew the lock, or stop (_Stop) when it is lost, the time budget is
        spent or the tick emitted its cap of findings."""
        if self._found >= self.found_cap:
            raise _Stop(f"{self._found} findings")
        if asyncio.get_running_loop().time() >= self._deadline:
            raise _Stop("time budget spent")
        if not await self.finder.renew(self._token, LOCK_MS):
            raise _Stop("lock lost")

    async def _rescan(self, now: int) -> None:
        """The keys of the orgs whose settings changed so that keys already idle may be due
        (gateway.store.finder.settings_changed): a batch at a time from the org's cursor, each
        planned again under the new settings (an unused event the old ones had made due before the
        change is not announced again)."""
        for org_id, value in (await self.finder.rescans()).items():
            cursor, old, at = value.split(":")
            quiet = (int(old), int(at)) if old else None
            start = int(cursor)
            while True:
                ids = await self.finder.org_key_ids(org_id, start, BATCH)
                if ids:
                    await self._unused_batch(ids, now, quiet)
                start += len(ids)
                done = len(ids) < BATCH
                moved = await self.finder.rescan_step(org_id, value, None if done else f"{start}:{old}:{at}")
                value = f"{start}:{old}:{at}"
                await self._go_on()
                if done or not moved:  # (not moved: queued again meanwhile, from the start next tick)
                    break

    # -- emitting -------------------------------------------------------------------------------
    async def _emit(self, entries: list[FeedEntry], now: int, keep: dict[str, int] | None = None) -> None:
        """Claim the findings (those found before are dropped), emit each, then clear them as emitted."""
        claimed = await self.finder.claim(entries, now, keep)
        await self.emit_all(claimed)
        await self.finder.emitted([e.id for e in claimed])
        self._found += len(claimed)

    async def emit_all(self, entries: list[FeedEntry]) -> None:
        """Append to the outbox in one round trip (pipelined)."""
        await self.store.events.emit_many(entries)
        for entry in entries:
            self.metrics.key_events.labels(entry.type).inc()

    async def _settle(self) -> None:
        """Emit what an earlier tick claimed but did not clear (it stopped between the two)."""
        pending = await self.finder.unsettled()
        await self.emit_all(pending)
        await self.finder.emitted([e.id for e in pending])

    # -- expiry -----------------------------------------------------------------------------------
    async def _expiry_batch(self, line: str, batch: list[tuple[bytes, int]], now: int) -> None:
        parsed = [(member, p) for member, _ in batch if (p := parse_expiry_member(member)) is not None]
        records = await self.store.get_many([key_id for _, (key_id, _) in parsed])
        found, drop = [], []
        for (member, (key_id, expires_at)), record in zip(parsed, records, strict=True):
            if record is None or record.alias_id is not None or record.expires_at != expires_at:
                # A change that did not land (or has not yet): skipped; once its expiry is more than
                # the slack past (no change in flight writes that late), the expired window drops it.
                if line == "expired" and expires_at <= now - SLACK_MS:
                    drop.append(member)
                continue
            if record.revoked_at is not None:
                drop.append(member)
                continue
            if passed_line(expires_at, now) != line:
                continue  # another line's (a later one passed too: only the latest is sent)
            data = {**_about(record), "expires_at": rfc3339(expires_at), "days_left": days_left(expires_at, now)}
            found.append(found_entry(expiry_event_id(key_id, line, expires_at), record.org_id, now,
                                     EXPIRED if line == "expired" else EXPIRING, key_id, data))
            if line == "expired":
                drop.append(member)  # nothing more to find about this expiry
        await self._emit(found, now)
        await self.finder.drop(self.finder.expiry, drop)

    # -- unused -----------------------------------------------------------------------------------
    async def _unused_batch(self, key_ids: list[str], now: int, quiet: tuple[int, int] | None = None) -> None:
        """Keys that have been idle a day or more, or whose unused time came: their events,
        auto-expiries, and when to look at them again. ``quiet``: (unused_days, time) of a
        rescan: no unused event for a key those days had already made due at that time."""
        records = await self.store.get_many(key_ids)
        live = [r for r in records if r is not None and r.alias_id is None and r.revoked_at is None
                and r.status(now) == "active"]
        gone = [r.id for r in records if r is not None and r.revoked_at is not None]
        usage, _ = await self.store.ledger.read([r.id for r in live]) if live else ({}, [])
        settings: dict[str, OrgSettings | None] = {}
        found, expire, later, keep, announced = [], [], {}, {}, {}
        for record in live:
            org = await self._settings(record.org_id, settings)
            if org is None:
                later[record.id] = now + BAD_SETTINGS_RETRY_MS
                continue
            used = usage[record.id][0]
            last = max(record.created_at, used or 0)
            plan = unused_plan(last, now, org.unused_days, org.expire_unused_days)
            if plan.event and quiet and last + quiet[0] * DAY_MS <= quiet[1]:
                # announced under the old settings: marked found again (until the key's next look)
                announced[unused_event_id(record.id, last)] = (plan.next_due or now) + DAY_MS
            elif plan.event:
                data = {**_about(record), "last_used_at": rfc3339(used), "days": (now - last) // DAY_MS}
                event_id = unused_event_id(record.id, last)
                found.append(found_entry(event_id, record.org_id, now, UNUSED, record.id, data))
                if plan.next_due is not None:  # its marker outlives the key's next look (no repeat then)
                    keep[event_id] = plan.next_due + DAY_MS
            if plan.expire:
                expire.append((record, last))
            if plan.next_due is not None:
                later[record.id] = plan.next_due
        await self.finder.mark(announced)
        await self._emit(found, now, keep)
        await self._expire_all(expire, now, later)
        await self.finder.drop(self.finder.lastused, gone)
        await self.finder.schedule(later, [k for k in key_ids if k not in later])

    async def _settings(self, org_id: str, cache: dict[str, OrgSettings | None]) -> OrgSettings | None:
        if org_id not in cache:
            try:
                cache[org_id] = await self.store.orgs.get(org_id)
            except ValueError as exc:
                log.warning("key-event finder: org %s: %s; its keys are looked at again later", org_id, exc)
                cache[org_id] = None
        return cache[org_id]

    async def _expire_all(self, expire: list[tuple[KeyRecord, int]], now: int, later: dict[str, int]) -> None:
        """Expire a batch's unused keys (each with the last use it was planned for) through the
        normal edit path, each invalidated on every gateway as it is done, then one broadcast of
        all their ids that waits for every gateway's acknowledgement. A key
        whose last use moved since the batch read it (used meanwhile: read again right before
        its edit) or that changed meanwhile (``if_version``) is looked at again instead."""
        ids: list[str] = []
        try:
            for record, last in expire:
                usage, _ = await self.store.ledger.read([record.id])
                if max(record.created_at, usage[record.id][0] or 0) != last:
                    later[record.id] = now  # used meanwhile: planned again from its new last use
                    continue
                done = await self._expire(record, now)
                if done is None:
                    later[record.id] = now + RETRY_MS
                elif done:
                    # every gateway drops it now (one PUBLISH); the batch's broadcast below waits for
                    # their acknowledgements of all of them at once
                    await self.store.publish_invalidation(all_ids(done), secrets.token_hex(8))
                    ids += all_ids(done)
        finally:
            if ids:
                await self.store.broadcast_revocation(ids, self.ack_timeout)

    async def _expire(self, record: KeyRecord, now: int) -> KeyRecord | bool | None:
        """Expire an unused key now, through the normal edit path, if it is still the version read;
        its ids are broadcast by the caller. The edited record; True when there is nothing more
        to do (revoked, gone); None: retried later."""
        try:
            done = await self.store.lifecycle.edit(org_id=record.org_id, key_id=record.id, actor=AUTO_EXPIRY_ACTOR,
                                                   now_ms=now, ack_timeout=self.ack_timeout, expires_at=now,
                                                   if_version=record.version, broadcast=False)
        except (errors.KeyIsRevoked, errors.KeyNotFound):
            return True
        except (errors.VersionMismatch, *FAULTS) as exc:
            log.warning("key-event finder: expiring unused key %s failed (%s); retried later", record.id,
                        type(exc).__name__)
            return None
        if done is None:
            return True
        self.metrics.keys_auto_expired.inc()
        log.info("key-event finder: expired key %s of org %s (unused)", record.id, record.org_id)
        return done


class _Stop(Exception):
    """A tick stops between batches (lock lost, time budget or findings cap)."""


def _about(record: KeyRecord) -> dict:
    """What a found event's data says of its key (never a secret)."""
    return {"org_id": record.org_id, "name": record.name, "prefix": record.prefix}


async def run(state, ack_timeout: float) -> None:
    """The finder of an admin API process (``state``: its AdminState), every --key-events-interval."""
    await KeyEventFinder(state.store, state.clock, state.metrics, ack_timeout).run(state.settings.key_events_interval)
