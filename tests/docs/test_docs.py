"""The README's configuration reference lists every setting the code accepts, and nothing else."""

from __future__ import annotations

import re

import msgspec

from gateway.config import ServeSettings, env_names, flag
from tests.support import ROOT


def test_every_serve_setting_is_documented_with_its_env_name():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("`gateway serve`:", 1)[1].split("\n\n", 2)[1]
    documented = set(re.findall(r"^\| `(--[a-z0-9-]+)`", table, flags=re.M))
    fields = {flag(f.name) for f in msgspec.structs.fields(ServeSettings)}
    assert documented == fields
    for f in msgspec.structs.fields(ServeSettings):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{flag(f.name)}`"))
        assert f"`{env_names(f.name)[0]}`" in row, row
