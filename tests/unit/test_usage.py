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
    assert buf.drain().values == {"b": (9, 2), "x": (6, 2)}  # b's use; x once more after a success


def test_node_ids_differ_and_can_be_given():
    assert UsageBuffer().node_id != UsageBuffer().node_id
    assert UsageBuffer("gw_test").node_id == "gw_test"


# A model of Redis for the buffer: the node's hash (what landed), and the base a fold moves it to.
class Model:
    def __init__(self) -> None:
        self.node: dict[str, tuple[int, int]] = {}
        self.node_seq = 0
        self.base: dict[str, tuple[int, int]] = {}

    def land(self, batch) -> None:
        self.node.update(batch.values)
        self.node_seq = batch.seq

    def fold(self) -> int:
        for key, value in self.node.items():
            self.base[key] = merge(self.base.get(key), value)
        self.node, seq, self.node_seq = {}, self.node_seq, 0
        return seq

    def merged(self) -> dict[str, tuple[int, int]]:
        keys = set(self.node) | set(self.base)
        return {k: merge(self.base.get(k), self.node.get(k)) for k in keys}


def merge(a, b):
    last, count = codec.merge_usage([a, b])
    return (last, count)


def flush(buf: UsageBuffer, model: Model, outcomes: list[str], limit: int) -> None:
    """What gateway.tasks.flush_usage does, with each write's fate chosen by the test."""
    for outcome in outcomes:
        batch = buf.drain(limit)
        if batch is None:
            return
        if outcome in ("ok", "landed_but_failed"):
            model.land(batch)
        if outcome == "ok":
            buf.confirm(batch)
        else:  # "lost" or "landed_but_failed": the writer saw an error
            buf.restore(batch)
            return


actions = st.lists(st.one_of(
    st.tuples(st.just("use"), st.sampled_from("abcd"), st.integers(1, 1000)),
    st.tuples(st.just("flush"), st.lists(st.sampled_from(["ok", "ok", "lost", "landed_but_failed"]),
                                         min_size=1, max_size=4)),
    st.tuples(st.just("folded_while_away")),
), max_size=40)


@settings(max_examples=1000, deadline=None)
@given(actions, st.integers(1, 3))
def test_nothing_is_lost_or_counted_twice_whatever_lands_and_whenever_a_fold_happens(steps, limit):
    buf, model = UsageBuffer(), Model()
    truth: dict[str, tuple[int, int]] = {}
    for step in steps:
        if step[0] == "use":
            _, key, at = step
            buf.add(key, at)
            truth[key] = merge(truth.get(key), (at, 1))
        elif step[0] == "flush":
            flush(buf, model, step[1], limit)
        else:
            buf.rebase(model.fold())  # what the next beat reports
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
    buf.rebase(model.fold())
    flush(buf, model, ["ok"] * 3, limit=1)
    assert model.merged() == {"a": (1, 1), "b": (2, 1)}


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
