"""The configured limits: the default plan of keys that set none, the operators' ceilings and the
store-fault policy, from a limits file (YAML) and flags (issue 16).

Pure, like gateway.scopes (``load_limits`` reads the file; nothing else does I/O). The file::

    default: standard                 # the plan of keys whose record sets no limits
    plans:
      standard:
        - {window: minute, limit: 600}
        - {window: month, limit: 1000000}
    max:                              # no key's limit may exceed these (and they cap every key)
      - {window: second, limit: 1000}
    faults: {rate: open, quota: closed}

Errors read ``file:line: field: message`` like scopes.yaml's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, NoReturn, Sequence

from gateway.ratelimit import CLOSED, MAX_LIMIT, OPEN, WINDOWS, FaultPolicy, Limit
from gateway.yaml_lines import FileError, YamlError, compose

TOP_FIELDS = ("default", "plans", "max", "faults")
PLAN_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_LIMITS = len(WINDOWS)  # one limit per window
_ORDER = {window: i for i, window in enumerate(WINDOWS)}


class LimitsError(FileError):
    """A limits file or flag that cannot be used; ``str()`` reads ``file:line: field: message``."""


def ordered(limits: Iterable[Limit]) -> tuple[Limit, ...]:
    """Shortest window first (second ... month): the one order limits are shown and stored in."""
    return tuple(sorted(limits, key=lambda limit: _ORDER[limit.window]))


def describe(config: LimitsConfig) -> str:
    """What the admin API must agree with the gateways on, as one canonical line: the default
    plan and the ceilings (``default=minute:600,month:1000000 max=second:1000``; "" for none).
    The gateways write theirs to Redis, the admin API warns when its own differs."""
    def part(name: str, limits: Sequence[Limit]) -> str:
        return f"{name}=" + ",".join(f"{limit.window}:{limit.limit}" for limit in ordered(limits)) if limits else ""
    return " ".join(p for p in (part("default", config.default), part("max", config.ceilings)) if p)


def check_limits(limits: Sequence[Limit]) -> None:
    """ValueError unless ``limits`` has at most one limit per window (and at least one)."""
    if not limits:
        raise ValueError("at least one limit (or none at all: null, and the default applies)")
    windows = [limit.window for limit in limits]
    for window in windows:
        if windows.count(window) > 1:
            raise ValueError(f"one limit per window: {window} is given {windows.count(window)} times")


@dataclass(frozen=True)
class LimitsConfig:
    """What the gateway enforces for a key, given the limits its record sets (or None)."""

    default: tuple[Limit, ...] = ()
    ceilings: tuple[Limit, ...] = ()
    faults: FaultPolicy = FaultPolicy()
    plans: Mapping[str, tuple[Limit, ...]] = field(default_factory=lambda: MappingProxyType({}))
    default_plan: str | None = None

    def effective(self, limits: Sequence[Limit] | None) -> tuple[Limit, ...]:
        """The record's own limits, else the default; then each ceiling caps its window (added
        when the key has none). () means unlimited."""
        base = self.default if limits is None else tuple(limits)
        if not self.ceilings:
            return ordered(base) if limits is not None else base
        caps = {limit.window: limit.limit for limit in self.ceilings}
        out = [Limit(limit.window, min(limit.limit, caps.pop(limit.window, limit.limit))) for limit in base]
        out += [Limit(window, cap) for window, cap in caps.items()]
        return ordered(out)

    def check(self, limits: Sequence[Limit] | None) -> None:
        """ValueError naming the window when a key's limit is above the operators' ceiling."""
        if limits is None:
            return
        caps = {limit.window: limit.limit for limit in self.ceilings}
        for limit in limits:
            cap = caps.get(limit.window)
            if cap is not None and limit.limit > cap:
                raise ValueError(f"per-{limit.window} limit {limit.limit} is above this gateway's maximum of {cap}")


NO_LIMITS = LimitsConfig()


def parse_limit(spec: str) -> Limit:
    """``minute=600`` -> Limit("minute", 600); ValueError with a message for anything else."""
    window, sep, amount = spec.strip().partition("=")
    window, amount = window.strip(), amount.strip()
    if not sep or not window or not amount:
        raise ValueError(f"expected WINDOW=LIMIT (e.g. minute=600; windows: {', '.join(WINDOWS)}), got {spec!r}")
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r} in {spec!r}; windows: {', '.join(WINDOWS)}")
    if not amount.isdigit() or not 1 <= int(amount) <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {amount!r} in {spec!r}")
    return Limit(window, int(amount))


def parse_limit_specs(text: str) -> tuple[Limit, ...]:
    """``minute=600,month=1000000`` -> the limits in window order; () for an empty text."""
    specs = [spec for spec in text.split(",") if spec.strip()]
    if not specs:
        return ()
    limits = [parse_limit(spec) for spec in specs]
    check_limits(limits)
    return ordered(limits)


def parse_limits(text: str | bytes, filename: str = "limits.yaml") -> LimitsConfig:
    """Parse a limits file's contents; LimitsError (file, line, field) if it is invalid."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise LimitsError(filename, None, "", f"not UTF-8 text (byte {exc.start})") from None
    try:
        doc = compose(text)
    except YamlError as exc:
        raise LimitsError(filename, exc.line, exc.field, exc.message) from None

    def fail(where: str, message: str, *, key: bool = False) -> NoReturn:
        raise LimitsError(filename, (doc.key_lines if key else doc.lines).get(where), where, message)

    top = doc.value
    if top is None:
        return NO_LIMITS
    if not isinstance(top, dict):
        fail("", f"the file must be a mapping of {', '.join(TOP_FIELDS)}")
    for name in top:
        if name not in TOP_FIELDS:
            fail(name, f"unknown field; expected {', '.join(TOP_FIELDS)}", key=True)

    def limit_list(where: str, value: Any) -> tuple[Limit, ...]:
        if not isinstance(value, list) or not value:
            fail(where, "expected a list of {window: WINDOW, limit: N}")
        out: list[Limit] = []
        for i, item in enumerate(value):
            at = f"{where}[{i}]"
            if not isinstance(item, dict) or set(item) != {"window", "limit"}:
                fail(at, "expected {window: WINDOW, limit: N} (exactly these two fields)")
            if item["window"] not in WINDOWS:
                fail(f"{at}.window", f"unknown window {item['window']!r}; windows: {', '.join(WINDOWS)}")
            amount = item["limit"]
            if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= MAX_LIMIT:
                fail(f"{at}.limit", f"expected an integer from 1 to {MAX_LIMIT}, got {amount!r}")
            if any(limit.window == item["window"] for limit in out):
                fail(f"{at}.window", f"one limit per window: {item['window']} is given twice")
            out.append(Limit(item["window"], amount))
        return ordered(out)

    plans: dict[str, tuple[Limit, ...]] = {}
    raw_plans = top.get("plans", {})
    if not isinstance(raw_plans, dict):
        fail("plans", "expected a mapping of plan name -> list of limits")
    for name, value in raw_plans.items():
        if not isinstance(name, str) or not PLAN_NAME_RE.fullmatch(name):
            fail(f"plans.{name}", "plan names are 1-32 of a-z, 0-9, _ and -, starting with a letter or digit", key=True)
        plans[name] = limit_list(f"plans.{name}", value)
    default_plan = top.get("default")
    if default_plan is not None and (not isinstance(default_plan, str) or default_plan not in plans):
        known = ", ".join(sorted(plans)) or "none"
        fail("default", f"names no plan of this file (plans: {known})")
    faults = FaultPolicy()
    if "faults" in top:
        raw = top["faults"]
        if not isinstance(raw, dict) or not set(raw) <= {"rate", "quota"}:
            fail("faults", "expected {rate: open|closed, quota: open|closed}")
        for kind, value in raw.items():
            if value not in (OPEN, CLOSED):
                fail(f"faults.{kind}", f"expected {OPEN} or {CLOSED}, got {value!r}")
        faults = FaultPolicy(**raw)
    ceilings = limit_list("max", top["max"]) if "max" in top else ()
    for name, limits in plans.items():
        for limit in limits:
            cap = next((c.limit for c in ceilings if c.window == limit.window), None)
            if cap is not None and limit.limit > cap:
                fail(f"plans.{name}", f"per-{limit.window} limit {limit.limit} is above max ({cap})")
    default = plans[default_plan] if default_plan else ()
    return LimitsConfig(default=default, ceilings=ceilings, faults=faults,
                        plans=MappingProxyType(plans), default_plan=default_plan)


def with_flags(base: LimitsConfig, default_flag: str = "", rate_faults: str | None = None,
               quota_faults: str | None = None) -> LimitsConfig:
    """The file's configuration with the flags applied: ``--default-limits`` (an error if the file
    names a default too) and the fault policies (which override the file's)."""
    default, plan = base.default, base.default_plan
    if default_flag.strip():
        if base.default_plan:
            raise LimitsError("", None, "--default-limits", f"given, but the limits file names a default plan too "
                              f"({base.default_plan!r}); keep one of them")
        try:
            default, plan = parse_limit_specs(default_flag), None
        except ValueError as exc:
            raise LimitsError("", None, "--default-limits", str(exc)) from None
    faults = base.faults
    for name, value in (("rate", rate_faults), ("quota", quota_faults)):
        if value:
            if value not in (OPEN, CLOSED):
                flag = "--rate-limit-faults" if name == "rate" else "--quota-faults"
                raise LimitsError("", None, flag, f"expected {OPEN} or {CLOSED}, got {value!r}")
            faults = FaultPolicy(**{**{"rate": faults.rate, "quota": faults.quota}, name: value})
    if default_flag.strip():
        for limit in default:
            cap = next((c.limit for c in base.ceilings if c.window == limit.window), None)
            if cap is not None and limit.limit > cap:
                raise LimitsError("", None, "--default-limits", f"per-{limit.window} limit {limit.limit} is above "
                                  f"the limits file's max of {cap}")
    return LimitsConfig(default=default, ceilings=base.ceilings, faults=faults, plans=base.plans, default_plan=plan)


def load_limits(path: str | os.PathLike[str] | None, default_flag: str = "", rate_faults: str | None = None,
                quota_faults: str | None = None) -> LimitsConfig:
    """Read the limits file (None or "": no file) and apply the flags; LimitsError if invalid."""
    base = NO_LIMITS
    if path:
        filename = os.fspath(path)
        try:
            with open(filename, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise LimitsError(filename, None, "", f"cannot read: {exc.strerror or exc}") from None
        base = parse_limits(data, filename)
    return with_flags(base, default_flag, rate_faults, quota_faults)


def settings_limits(settings: Any) -> LimitsConfig:
    """The LimitsConfig of ServeSettings or AdminSettings (their limits_file, default_limits,
    rate_limit_faults and quota_faults)."""
    return load_limits(settings.limits_file or None, settings.default_limits,
                       settings.rate_limit_faults or None, settings.quota_faults or None)
