"""The last-used buffer: absolute totals, retries, rebase after a fold."""

from __future__ import annotations

from hypothesis import given, settings
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
