"""The per-org quota's pure parts: the reserve script's answers as errors, and INFO memory as the
admin API reads it."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.store.quota import OrgQuota, check_reserve, memory_fraction


def test_reserve_answers_become_errors():
    quota = OrgQuota(10, 5)
    check_reserve([1], quota)
    check_reserve(-1, quota)  # the deadline is the caller's
    with pytest.raises(errors.KeyLimitReached) as limit:
        check_reserve([-2, 10], quota)
    assert limit.value.status == 409 and limit.value.extra == {"limit": 10}
    with pytest.raises(errors.TooManyCreates) as rate:
        check_reserve([-3, 1500], quota)
    assert rate.value.status == 429 and rate.value.headers() == {"Retry-After": "2"}


@pytest.mark.parametrize("info, fraction", [
    ({"used_memory": 900, "maxmemory": 1000}, 0.9),
    ({"used_memory": 900, "maxmemory": 0}, 0.0),  # no maxmemory: no mark
    ({"a:1": {"used_memory": 1, "maxmemory": 10}, "b:2": {"used_memory": 5, "maxmemory": 10}}, 0.5),
])
def test_memory_fraction_reads_the_fullest_node(info, fraction):
    assert memory_fraction(info) == fraction
