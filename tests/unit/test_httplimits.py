"""HTTP head limits (pure): the defaults are the ones README's request table documents, and one value
serves both sides (the proxy port's requests, the upstream's responses)."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from gateway.config import ServeSettings
from gateway.httplimits import Limits
from tests.support import ROOT


def test_defaults_are_the_documented_limits():
    limits = Limits()
    assert (limits.max_target, limits.max_field, limits.max_headers, limits.max_head) == (8190, 16 * 1024, 128, 64 * 1024)
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if "`headers_too_large`" in line)
    assert "target over 8,190 bytes" in row and "a header over 16 KiB, more than 128" in row and "over 64 KiB" in row


def test_head_timeout_default_is_the_serve_setting_default():
    default = next(f.default for f in msgspec.structs.fields(ServeSettings) if f.name == "head_timeout")
    assert Limits().head_timeout == default == 75.0


def test_limits_cannot_be_changed_once_shared():
    limits = Limits(max_headers=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_headers = 1000  # type: ignore[misc]
    assert limits == Limits(max_headers=4) and limits != Limits()
