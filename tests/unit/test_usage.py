"""The last-used buffer: absolute totals, retries, rebase after a fold."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.store import codec
from gateway.usage import UsageBuffer


def test_writes_carry_absolute_totals_of_the_changed_keys_only():
    buf = UsageBuffer()
    buf.add("k1", 100)
    buf.add("k1", 50)
    buf.add("k2", 7)
    first = buf.drain()
    assert first.values == {"k1": (100, 2), "k2": (7, 1)} and len(buf) == 0
    buf.confirm(first)
    buf.add("k1", 80)  # older than the latest: the time stays, the count grows
    second = buf.drain()
    assert second.values == {"k1": (100, 3)} and second.seq == first.seq + 1
    assert buf.drain() is None


def test_a_failed_write_is_written_again_first_and_counted_once():
    buf = UsageBuffer()
    for key in ("a", "b", "c"):
        buf.add(key, 1)
    buf.confirm(buf.drain())
    buf.add("x", 5)
    buf.add("b", 9)
    failed = buf.drain(limit=1)
    assert failed.values == {"x": (5, 1)}
    buf.restore(failed)
    buf.add("x", 6)
    retry = buf.drain(limit=1)
    assert retry.values == {"x": (6, 2)}  # first in line, with the use that came meanwhile
    buf.confirm(retry)
    # b's use; not x once more: should the failed write run late, the store keeps x's larger totals
    assert buf.drain().values == {"b": (9, 2)}


def test_node_ids_differ_and_can_be_given():
    assert UsageBuffer().node_id != UsageBuffer().node_id
    assert UsageBuffer("gw_test").node_id == "gw_test"


class Model:
    """Redis for the last-used data (gateway.store.ledger): the node's hash (its generation "^",
    the latest sequence number "~", the totals), the base a fold moves it to, the nodes index
    and the folded record (_GUARD + HSET + _SETTLE, or _WRITE; _FOLD; _BEAT), and the writes that
    failed but that Redis runs later (``late``). A read counts the node's hash only while the node is in the index."""

    def __init__(self) -> None:
        self.node: dict[str, tuple[int, int]] = {}
        self.node_gen = 0  # "^" (absent: 0)
        self.node_seq = 0  # "~" (absent: 0)
        self.base: dict[str, tuple[int, int]] = {}
        self.registered = False  # the node is in the nodes index
        self.folded_seq: int | None = None  # the folded record of a node folded while away
        self.late: list = []

    def land(self, batch) -> bool:
        """_WRITE: False when refused (a write of an older generation than the hash's)."""
        if batch.gen < self.node_gen:
            return False
        if batch.gen > self.node_gen or batch.seq >= self.node_seq:
            self.node.update(batch.values)
            self.node_gen, self.node_seq = batch.gen, batch.seq
        else:  # run late, after a newer write: the later use and the larger count
            for key, (last, n) in batch.values.items():
                old = self.node.get(key, (last, n))
                self.node[key] = (max(old[0], last), max(old[1], n))
        return True

    def fold(self, away: bool) -> None:
        """_FOLD: into the base; the hash keeps only its next generation."""
        for key, value in self.node.items():
            self.base[key] = merge(self.base.get(key), value)
        if away:
            self.folded_seq = self.node_seq
        self.node, self.node_gen, self.node_seq = {}, self.node_gen + 1, 0
        self.registered = False

    def beat(self, registered: bool) -> tuple[int, int] | None:
        """_BEAT: None (carry on), or the seq of the node's last write that was folded and the
        generation its hash admits."""
        known, self.registered = self.registered, True
        if known or not registered:
            return None
        seq, self.folded_seq = self.folded_seq or 0, None
        return seq, self.node_gen

    def merged(self) -> dict[str, tuple[int, int]]:
        node = self.node if self.registered else {}
        return {k: merge(self.base.get(k), node.get(k)) for k in set(node) | set(self.base)}


def merge(a, b):
    last, count = codec.merge_usage([a, b])
    return (last, count)


def flush(buf: UsageBuffer, model: Model, outcomes: list[str], limit: int) -> None:
    """What gateway.tasks.flush_usage does, with each write's fate chosen by the test: "ok",
    "lost" (never ran), "landed_but_failed" (ran, its answer lost), "late" (its answer lost, and
    Redis runs it later: ``model.late``)."""
    for outcome in outcomes:
        if not len(buf):
            return
        if buf.beat_at is None:  # the node beats first (it does once a minute)
            landed = model.beat(buf.registered)
            if landed is not None:
                buf.rebase(*landed)
            buf.registered, buf.beat_at = True, 1.0
        batch = buf.drain(limit)
        if batch is None:
            return
        if outcome == "ok":
            if model.land(batch):
                buf.confirm(batch)
            else:  # refused: the node's hash was folded and it did not know (flush_usage)
                buf.restore(batch)
                buf.beat_at = None
            continue
        if outcome == "landed_but_failed":
            model.land(batch)
        elif outcome == "late":
            model.late.append(batch)
        buf.restore(batch)
        return


actions = st.lists(st.one_of(
    st.tuples(st.just("use"), st.sampled_from("abcd"), st.integers(1, 1000)),
    st.tuples(st.just("flush"), st.lists(st.sampled_from(["ok", "ok", "lost", "landed_but_failed", "late"]),
                                         min_size=1, max_size=4)),
    st.tuples(st.just("late_lands")),
    st.tuples(st.just("late_one"), st.integers(0, 3)),  # one of them: late writes land in any order
    st.tuples(st.just("folded_while_away")),  # and its next flush beats first
    st.tuples(st.just("folded_unnoticed")),  # and it writes before its next beat
    st.tuples(st.just("shutdown")),  # the last flush, the node folds its own hash; used again later
), max_size=50)


def check(model: Model, truth: dict[str, tuple[int, int]], seen: dict[str, tuple[int, int]]) -> None:
    """What a read finds at any time: never a use that did not happen, never counted twice, and
    never less than an earlier read found."""
    for key, (last, n) in model.merged().items():
        assert last <= truth[key][0] and n <= truth[key][1], (key, (last, n), truth[key])
        if key in seen:
            assert last >= seen[key][0] and n >= seen[key][1], (key, (last, n), seen[key])
        seen[key] = (last, n)
    assert set(seen) <= set(model.merged())


@settings(max_examples=1000, deadline=None)
@given(actions, st.integers(1, 3))
# A write whose answer was lost lands after the retry (and the once-more write after it): with a
# plain HSET the key's totals went back until it was used again.
@example(steps=[("use", "a", 1), ("flush", ["late"]), ("use", "a", 2), ("flush", ["ok", "ok"]),
                ("late_lands",)], limit=1)
# ... or after the node's hash was folded: it recreated the hash, and the node's next beat made it
# count again (twice, with the base).
@example(steps=[("use", "a", 1), ("flush", ["ok"]), ("use", "a", 2), ("flush", ["late"]), ("flush", ["ok"]),
                ("folded_while_away",), ("late_lands",), ("use", "b", 3), ("flush", ["ok"])], limit=1)
@example(steps=[("use", "a", 1), ("flush", ["late"]), ("flush", ["ok"]), ("shutdown",), ("late_lands",),
                ("use", "b", 3), ("flush", ["ok"])], limit=1)
def test_last_used_is_exact_and_never_goes_back_whatever_lands_when(steps, limit):
    buf, model = UsageBuffer(), Model()
    truth: dict[str, tuple[int, int]] = {}
    seen: dict[str, tuple[int, int]] = {}
    for step in steps:
        if step[0] == "use":
            _, key, at = step
            buf.add(key, at)
            truth[key] = merge(truth.get(key), (at, 1))
        elif step[0] == "flush":
            flush(buf, model, step[1], limit)
        elif step[0] == "late_one":
            if model.late:
                model.land(model.late.pop(step[1] % len(model.late)))
        elif step[0] == "late_lands":
            for batch in model.late:
                model.land(batch)
            model.late = []
        elif step[0] == "shutdown":
            flush(buf, model, ["ok"] * 20, limit)  # gateway.tasks.flush_usage, then _fold_own
            if buf.registered:
                model.fold(away=False)
                buf.retire(model.node_gen)
        elif model.registered:  # only a node in the index is found dead
            model.fold(away=True)
            if step[0] == "folded_while_away":
                buf.beat_at = None  # a minute passed: it beats before it writes
        check(model, truth, seen)
    for batch in model.late:  # a failed write that Redis runs after all
        model.land(batch)
        check(model, truth, seen)
    for _ in range(20):  # Redis is back: flush until everything is written
        flush(buf, model, ["ok"] * 10, limit)
    assert len(buf) == 0
    assert model.merged() == truth


def test_a_fold_after_a_lost_write_and_a_later_success_keeps_the_lost_uses():
    buf, model = UsageBuffer(), Model()
    buf.add("a", 1)
    buf.add("b", 2)
    flush(buf, model, ["lost"], limit=1)  # a's write never reached Redis
    flush(buf, model, ["ok"], limit=1)  # the next write must carry a again, not b alone
    model.fold(away=True)
    buf.beat_at = None
    buf.add("c", 3)
    flush(buf, model, ["ok"] * 3, limit=1)  # beats first: rebase
    assert model.merged() == {"a": (1, 1), "b": (2, 1), "c": (3, 1)}


def test_writes_after_a_fold_are_the_next_generation():
    buf = UsageBuffer()
    buf.add("a", 1)
    first = buf.drain()
    buf.confirm(first)
    buf.rebase(first.seq)  # folded while away
    buf.add("a", 2)
    second = buf.drain()
    assert (second.gen, second.values) == (first.gen + 1, {"a": (2, 1)})  # the totals restarted
    buf.confirm(second)
    buf.retire()  # folded its own hash at shutdown
    buf.add("a", 3)
    third = buf.drain()
    assert (third.gen, third.values) == (second.gen + 1, {"a": (3, 1)}) and third.seq > second.seq


def test_retire_starts_afresh():
    buf = UsageBuffer()
    buf.add("a", 1)
    buf.confirm(buf.drain())
    buf.registered, buf.beat_at = True, 1.0
    buf.retire()
    assert not buf.registered and buf.beat_at is None
    buf.add("a", 2)
    assert buf.drain().values == {"a": (2, 1)}  # the totals restarted: not (2, 2)


# -- outcome classes and the usage history ----------------------------------------------------

from gateway.usage import CLIENT_ERROR, HISTORY_EVERY, HOUR_MS, OK, REDIRECT, REFUSED, SERVER_ERROR, outcome_class  # noqa: E402


def test_outcome_classes_are_the_status_the_client_got_or_refused_by_the_gateway():
    assert [outcome_class(s, False) for s in (200, 204, 302, 304, 403, 404, 405, 429, 499, 500, 502)] == [
        OK, OK, REDIRECT, REDIRECT, CLIENT_ERROR, CLIENT_ERROR, CLIENT_ERROR, CLIENT_ERROR, CLIENT_ERROR,
        SERVER_ERROR, SERVER_ERROR]
    # The gateway's own answers after authenticating: refusals, except what is not one.
    assert [outcome_class(s, True) for s in (403, 404, 405, 429, 413, 400, 502, 504)] == [
        REFUSED, REFUSED, REFUSED, REFUSED, CLIENT_ERROR, CLIENT_ERROR, SERVER_ERROR, SERVER_ERROR]


def test_history_counts_per_key_hour_and_class_as_absolute_totals():
    buf = UsageBuffer()
    buf.add("a", 5 * HOUR_MS + 1)
    buf.add("a", 5 * HOUR_MS + 2, REFUSED)
    buf.add("b", 5 * HOUR_MS + 3, REDIRECT)
    buf.add("a", 6 * HOUR_MS, SERVER_ERROR)
    buf.add("a", 5 * HOUR_MS + 4)  # a late finisher of the hour before
    assert buf.history_pending == 3
    write = buf.drain_history()
    assert write.hours == {5: {"a": (2, 0, 0, 0, 1), "b": (0, 1, 0, 0, 0)}, 6: {"a": (0, 0, 0, 1, 0)}}
    buf.confirm_history(write)
    buf.add("a", 6 * HOUR_MS + 5)
    assert buf.drain_history().hours == {6: {"a": (1, 0, 0, 1, 0)}}  # the node's totals, not the increment
    assert buf.drain().values == {"a": (6 * HOUR_MS + 5, 5), "b": (5 * HOUR_MS + 3, 1)}  # last used, as before


def test_an_hour_is_folded_once_it_is_over_and_all_of_it_landed():
    buf = UsageBuffer()
    buf.add("a", 5 * HOUR_MS)
    first = buf.drain_history()
    assert buf.foldable_hours() == []  # 5 is the latest hour: uses may still join it
    buf.add("a", 6 * HOUR_MS)
    assert buf.foldable_hours() == []  # 5 is over, but its write is not confirmed
    buf.restore_history(first)  # failed: written again (should it land late, the store keeps the larger counts)
    second = buf.drain_history()
    assert second.hours == {5: {"a": (1, 0, 0, 0, 0)}, 6: {"a": (1, 0, 0, 0, 0)}}
    buf.confirm_history(second)
    assert buf.drain_history() is None  # no write once more: nothing a late write could undo
    assert buf.foldable_hours() == [5] and buf.foldable_hours(everything=True) == [5, 6]
    buf.forget_hour(5)
    assert buf.foldable_hours(everything=True) == [6]


def test_history_writes_respect_the_limit_oldest_hours_first():
    buf = UsageBuffer()
    for hour in (3, 1, 2):
        for key in "xyz":
            buf.add(key, hour * HOUR_MS)
    sizes, hours = [], []
    while (write := buf.drain_history(limit=2)) is not None:
        sizes.append(len(write))
        hours += [h for h, keys in write.hours.items() for _ in keys]
        buf.confirm_history(write)
    assert sizes == [2, 2, 2, 2, 1] and hours == sorted(hours)


class HistoryModel:
    """Redis for the history (gateway.store.ledger._HIST_WRITE): a node's hash per hour and per
    day (absolute values, set as written by a write at least as recent as the hash's latest, else
    each field keeping the larger count class by class; refused once folded; read only once
    listed in its open index, which a fresh write does), folded into per-key sums."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, int], dict[str, tuple[int, ...]]] = {}
        self.indexed: set[tuple[str, int]] = set()
        self.folded: set[tuple[str, int]] = set()
        self.sums: dict[tuple[str, str, int], list[int]] = {}
        self.late: list = []  # writes that failed but that Redis runs later
        self.seq: dict[tuple[str, int], int] = {}  # per hash, the latest write's seq ("^")

    def run(self, write) -> None:
        for kind, by in (("h", write.hours), ("d", write.days)):
            for at, keys in by.items():
                if (kind, at) not in self.folded:
                    fields = self.open.setdefault((kind, at), {})
                    if write.seq >= self.seq.get((kind, at), 0):
                        fields.update(keys)
                        self.seq[(kind, at)] = write.seq
                    else:  # run late, after a newer write
                        for key, counts in keys.items():
                            fields[key] = tuple(map(max, fields.get(key, counts), counts))
                    if write.is_fresh(kind, at):
                        self.indexed.add((kind, at))

    def fold(self, kind: str, at: int) -> None:
        for key, counts in self.open.pop((kind, at), {}).items():
            cur = self.sums.setdefault((kind, key, at), [0] * 5)
            for i, n in enumerate(counts):
                cur[i] += n
        self.folded.add((kind, at))
        self.indexed.discard((kind, at))

    def merged(self) -> dict[tuple[str, str, int], list[int]]:
        """What a read finds: the per-key sums and the open hashes listed in their index."""
        out = {k: list(v) for k, v in self.sums.items()}
        for (kind, at), keys in self.open.items():
            if (kind, at) in self.indexed:
                for key, counts in keys.items():
                    cur = out.setdefault((kind, key, at), [0] * 5)
                    for i, n in enumerate(counts):
                        cur[i] += n
        return out


def fold_what_is_over(buf: UsageBuffer, redis: HistoryModel, everything: bool = False) -> None:
    for hour in buf.foldable_hours(everything):
        redis.fold("h", hour)
        buf.forget_hour(hour)
    for day in buf.foldable_days(everything):
        redis.fold("d", day)
        buf.forget_day(day)


history_steps = st.lists(st.one_of(
    st.tuples(st.just("use"), st.sampled_from("ab"), st.sampled_from([0, 1, 2, 23, 24, 25, 48]), st.integers(0, 4)),
    st.tuples(st.just("flush"), st.sampled_from(["ok", "ok", "lost", "landed_but_failed", "late"])),
    st.tuples(st.just("late_lands")),
    st.tuples(st.just("late_one"), st.integers(0, 3)),  # one of them: late writes land in any order
    st.tuples(st.just("wait"), st.sampled_from([1.0, 5.0, 10.0])),
), max_size=50)


@settings(max_examples=500, deadline=None)
@given(history_steps, st.integers(1, 3))
# A write whose answer was lost lands after a later write of the same day was confirmed (and the
# key's once-more write after it): it must not set the day's count back.
@example(steps=[("use", "b", 0, 0), ("flush", "late"), ("flush", "ok"), ("use", "b", 0, 0), ("use", "a", 1, 0),
                ("flush", "ok"), ("late_lands",)], limit=1)
def test_history_is_exact_whatever_lands_when(steps, limit):
    buf, redis = UsageBuffer(), HistoryModel()
    truth: dict[tuple[str, str, int], list[int]] = {}
    latest, now = 0, 0.0
    for step in steps:
        if step[0] == "use":
            _, key, hour, outcome = step
            latest = hour = max(hour, latest)  # uses are timed by the node's clock when answered
            buf.add(key, hour * HOUR_MS, outcome)
            truth.setdefault(("h", key, hour), [0] * 5)[outcome] += 1
            truth.setdefault(("d", key, hour // 24), [0] * 5)[outcome] += 1
        elif step[0] == "wait":
            now += step[1]
        elif step[0] == "flush":
            if not buf.history_due(now):  # what gateway.tasks.flush_usage asks first
                continue
            write = buf.drain_history(limit)
            if write is None:
                continue
            if step[1] == "ok":
                redis.run(write)
                buf.confirm_history(write)
                buf.history_at = now
                fold_what_is_over(buf, redis)
            elif step[1] == "landed_but_failed":
                redis.run(write)
                buf.restore_history(write)
            else:
                if step[1] == "late":
                    redis.late.append(write)
                buf.restore_history(write)
        elif step[0] == "late_one":
            if redis.late:
                redis.run(redis.late.pop(step[1] % len(redis.late)))
        else:
            for write in redis.late:
                redis.run(write)
            redis.late = []
    buf.closing = True
    for _ in range(30):  # Redis is back: flush until everything is written, then shut down
        if buf.history_due(now) and (write := buf.drain_history(limit)) is not None:
            redis.run(write)
            buf.confirm_history(write)
    assert redis.merged() == truth  # read before the last folds: every open hash is in its index
    fold_what_is_over(buf, redis, everything=True)
    for write in redis.late:  # a failed write that Redis runs after all, even after the fold
        redis.run(write)
    assert buf.history_pending == 0
    assert redis.merged() == truth


def test_the_history_is_written_every_history_every_seconds_when_an_hour_is_over_and_at_shutdown():
    buf = UsageBuffer()
    assert not buf.history_due(0.0)  # nothing to write
    buf.add("a", 5 * HOUR_MS)
    assert buf.history_due(0.0)  # the first write
    first = buf.drain_history()
    assert first.fresh == {("h", 5), ("d", 0)} and first.days == {0: {"a": (1, 0, 0, 0, 0)}}
    buf.confirm_history(first)
    buf.history_at = 100.0
    buf.add("a", 5 * HOUR_MS + 1)
    assert not buf.history_due(100.0 + HISTORY_EVERY - 0.1)  # in memory until HISTORY_EVERY passed
    assert buf.history_due(100.0 + HISTORY_EVERY)
    failed = buf.drain_history()
    assert failed.fresh == frozenset()  # the hashes are set up: no expiry or index entry again
    buf.restore_history(failed)
    assert buf.history_due(100.0)  # a failed write is retried at once
    retry = buf.drain_history()
    buf.confirm_history(retry)
    buf.history_at = 101.0
    assert buf.drain_history() is None  # written: the failed write, run late, changes nothing in the store
    buf.add("a", 5 * HOUR_MS + 2)
    assert not buf.history_due(101.0)
    buf.add("a", 6 * HOUR_MS)  # 5:00 is over, with a count not written: written at once
    assert buf.history_due(101.0) and buf.foldable_hours() == []
    write = buf.drain_history()
    assert write.hours == {5: {"a": (3, 0, 0, 0, 0)}, 6: {"a": (1, 0, 0, 0, 0)}}
    assert write.days == {0: {"a": (4, 0, 0, 0, 0)}} and write.fresh == {("h", 6)}
    buf.confirm_history(write)
    buf.history_at = 102.0
    assert buf.foldable_hours() == [5] and buf.foldable_days() == []  # day 0 goes on
    buf.forget_hour(5)
    buf.add("a", 6 * HOUR_MS + 1)
    assert not buf.history_due(102.0)
    buf.closing = True
    assert buf.history_due(102.0)  # shutdown: everything
    write = buf.drain_history()
    assert write.days == {0: {"a": (5, 0, 0, 0, 0)}}  # the folded hour 5 and the open hour 6
    buf.confirm_history(write)
    assert buf.foldable_hours(everything=True) == [6] and buf.foldable_days(everything=True) == []
    buf.forget_hour(6)
    assert buf.foldable_days(everything=True) == [0]


def test_a_fresh_hash_whose_write_failed_is_set_up_by_the_next_write():
    buf = UsageBuffer()
    buf.add("a", 5 * HOUR_MS)
    failed = buf.drain_history()
    buf.restore_history(failed)  # (it may have landed: set up again, harmless)
    assert buf.drain_history().fresh == {("h", 5), ("d", 0)}
