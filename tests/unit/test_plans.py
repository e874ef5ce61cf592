"""gateway.plans: the limits file, the flags, and the limits a record gets."""

from __future__ import annotations

import pytest

from gateway.plans import (NO_LIMITS, LimitsConfig, LimitsError, load_limits, parse_limit, parse_limit_specs,
                           parse_limits, with_flags)
from gateway.ratelimit import CLOSED, OPEN, FaultPolicy, Limit

FILE = """\
default: standard
plans:
  standard:
    - {window: month, limit: 1000000}
    - {window: minute, limit: 600}
  bulk:
    - {window: second, limit: 50}
max:
  - {window: second, limit: 100}
faults: {rate: closed}
"""


def test_a_file_gives_the_default_plan_in_window_order_its_ceilings_and_faults():
    config = parse_limits(FILE)
    assert config.default == (Limit("minute", 600), Limit("month", 1_000_000))
    assert config.default_plan == "standard"
    assert config.plans["bulk"] == (Limit("second", 50),)
    assert config.ceilings == (Limit("second", 100),)
    assert config.faults == FaultPolicy(rate=CLOSED, quota=CLOSED)


def test_effective_limits_are_the_records_own_else_the_default_and_every_ceiling_caps():
    config = parse_limits(FILE)
    # No limits of its own: the default plan, plus the ceiling's window.
    assert config.effective(None) == (Limit("second", 100), Limit("minute", 600), Limit("month", 1_000_000))
    # Its own replace the default; a ceiling caps a higher one (a ceiling lowered later applies at once).
    assert config.effective((Limit("day", 5), Limit("second", 500))) == (Limit("second", 100), Limit("day", 5))
    assert config.effective((Limit("second", 7),)) == (Limit("second", 7),)
    assert NO_LIMITS.effective(None) == ()
    assert NO_LIMITS.effective((Limit("hour", 3), Limit("second", 1))) == (Limit("second", 1), Limit("hour", 3))


def test_check_refuses_a_limit_above_a_ceiling_and_names_it():
    config = parse_limits(FILE)
    config.check(None)
    config.check((Limit("second", 100), Limit("month", 10**12)))
    with pytest.raises(ValueError, match="per-second limit 101 is above this gateway's maximum of 100"):
        config.check((Limit("second", 101),))


@pytest.mark.parametrize(("text", "where", "message"), [
    ("routes: []\n", "limits.yaml:1: routes", "unknown field"),
    ("- 1\n", "limits.yaml:1", "must be a mapping"),
    ("default: gold\nplans:\n  std: [{window: day, limit: 1}]\n", "limits.yaml:1: default", "names no plan of this file (plans: std)"),
    ("plans:\n  std:\n    - {window: week, limit: 1}\n", "limits.yaml:3: plans.std[0].window", "unknown window 'week'"),
    ("plans:\n  std:\n    - {window: day, limit: 0}\n", "limits.yaml:3: plans.std[0].limit", "integer from 1"),
    ("plans:\n  std:\n    - {window: day, limit: true}\n", "limits.yaml:3: plans.std[0].limit", "integer from 1"),
    ("plans:\n  std:\n    - {window: day, limit: 1.5}\n", "limits.yaml:3: plans.std[0].limit", "integer from 1"),
    ("plans:\n  std:\n    - {window: day, limit: 1000000000000000}\n", "limits.yaml:3: plans.std[0].limit", "integer from 1"),
    ("plans:\n  std:\n    - {window: day, limit: 1}\n    - {window: day, limit: 2}\n", "limits.yaml:4: plans.std[1].window",
     "one limit per window"),
    ("plans:\n  std:\n    - {window: day, limit: 1, burst: 2}\n", "limits.yaml:3: plans.std[0]", "exactly these two fields"),
    ("plans:\n  std: []\n", "limits.yaml:2: plans.std", "expected a list"),
    ("plans:\n  Std!: [{window: day, limit: 1}]\n", "limits.yaml:2: plans.Std!", "plan names"),
    ("plans: [1]\n", "limits.yaml:1: plans", "mapping of plan name"),
    ("plans:\n  std: [{window: second, limit: 9}]\nmax: [{window: second, limit: 5}]\n", "limits.yaml:2: plans.std",
     "per-second limit 9 is above max (5)"),
    ("faults: {rate: maybe}\n", "limits.yaml:1: faults.rate", "expected open or closed"),
    ("faults: {burst: open}\n", "limits.yaml:1: faults", "expected {rate"),
    ("plans: {a: *x}\n", "limits.yaml:1", "aliases"),
    ("a: [\n", "limits.yaml", "YAML syntax error"),
])
def test_a_bad_file_names_its_line_and_field(text, where, message):
    with pytest.raises(LimitsError) as err:
        parse_limits(text)
    assert str(err.value).startswith(where), str(err.value)
    assert message in str(err.value)


def test_an_empty_file_is_no_limits_and_bytes_must_be_utf8():
    assert parse_limits("") == NO_LIMITS
    with pytest.raises(LimitsError, match="not UTF-8"):
        parse_limits(b"plans: \xff\n")


@pytest.mark.parametrize(("spec", "limit"), [("minute=600", Limit("minute", 600)), (" month = 5 ", Limit("month", 5))])
def test_parse_limit(spec, limit):
    assert parse_limit(spec) == limit


@pytest.mark.parametrize(("spec", "message"), [
    ("minute", "expected WINDOW=LIMIT"), ("=5", "expected WINDOW=LIMIT"), ("week=5", "unknown window 'week'"),
    ("minute=0", "integer from 1"), ("minute=-1", "integer from 1"), ("minute=1e3", "integer from 1"),
    ("minute=1000000000000000", "integer from 1"),
])
def test_parse_limit_refuses(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_limit(spec)


def test_specs_are_ordered_and_one_per_window():
    assert parse_limit_specs("month=9, second=1,") == (Limit("second", 1), Limit("month", 9))
    assert parse_limit_specs("  ") == ()
    with pytest.raises(ValueError, match="minute is given 2 times"):
        parse_limit_specs("minute=1,minute=2")


def test_flags_set_the_default_and_override_the_files_faults():
    config = with_flags(NO_LIMITS, "minute=5", rate_faults=CLOSED, quota_faults=OPEN)
    assert config.default == (Limit("minute", 5),)
    assert config.faults == FaultPolicy(rate=CLOSED, quota=OPEN)
    assert with_flags(parse_limits(FILE), quota_faults=OPEN).faults == FaultPolicy(rate=CLOSED, quota=OPEN)
    assert with_flags(LimitsConfig()).faults == FaultPolicy(rate=OPEN, quota=CLOSED)  # the defaults


@pytest.mark.parametrize(("args", "message"), [
    ((parse_limits(FILE), "minute=5"), "--default-limits: given, but the limits file names a default plan too"),
    ((NO_LIMITS, "minute=x"), "--default-limits: limit must be an integer"),
    ((parse_limits("max: [{window: minute, limit: 3}]"), "minute=5"), "--default-limits: per-minute limit 5 is above the limits file's max of 3"),
    ((NO_LIMITS, "", "sometimes"), "--rate-limit-faults: expected open or closed"),
    ((NO_LIMITS, "", None, "sometimes"), "--quota-faults: expected open or closed"),
])
def test_bad_flags_are_named(args, message):
    with pytest.raises(LimitsError) as err:
        with_flags(*args)
    assert str(err.value).startswith(message), str(err.value)


def test_load_limits_reads_the_file_and_names_an_unreadable_one(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text(FILE)
    assert load_limits(path).default_plan == "standard"
    assert load_limits(None, "day=3").default == (Limit("day", 3),)
    assert load_limits("") == NO_LIMITS
    with pytest.raises(LimitsError, match=r"missing\.yaml: cannot read"):
        load_limits(tmp_path / "missing.yaml")


def test_describe_is_the_canonical_default_and_ceilings():
    from gateway.plans import NO_LIMITS, LimitsConfig, describe
    from gateway.ratelimit import Limit
    assert describe(NO_LIMITS) == ""
    config = LimitsConfig(default=(Limit("month", 1000), Limit("minute", 60)), ceilings=(Limit("second", 9),))
    assert describe(config) == "default=minute:60,month:1000 max=second:9"
    assert describe(LimitsConfig(ceilings=(Limit("day", 5),))) == "max=day:5"
