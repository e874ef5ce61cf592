"""The pure modules stay pure: no network, Redis, subprocess or event-loop import, directly or
through another gateway module. The list is README's (Layout: "Pure modules", and store/codec.py)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.support import ROOT

PURE = [
    "gateway.keys", "gateway.paths", "gateway.scopes", "gateway.headers", "gateway.framing", "gateway.httplimits", "gateway.signing",
    "gateway.credentials", "gateway.query", "gateway.clientaddr", "gateway.throttle", "gateway.cache",
    "gateway.usage", "gateway.history", "gateway.ratelimit", "gateway.leases", "gateway.plans", "gateway.model", "gateway.validation", "gateway.errors", "gateway.store.codec",
    "gateway.events", "gateway.orgsettings", "gateway.leaks", "gateway.webhooks", "gateway.urlpolicy", "gateway.keyevents",
    "admin_api.claims", "admin_api.signin_rules",
]
# I/O a pure module may not import (a name or anything under it).
FORBIDDEN = ("aiohttp", "redis", "hiredis", "httptools", "uvloop", "prometheus_client", "multidict", "yarl",
             "socket", "asyncio", "selectors", "ssl", "subprocess", "http.client", "http.server", "urllib.request")


def source_of(module: str):
    """The file of a gateway module (a package's __init__.py), or None for anything else."""
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_in(source: str) -> set[str]:
    """Every module an import statement anywhere in ``source`` names (``from a import b``: a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden_imports(module: str, source: str) -> dict[str, str]:
    """Forbidden name -> the gateway module that imports it, following gateway imports."""
    found: dict[str, str] = {}
    todo, seen = [(module, source)], {module}
    while todo:
        name, text = todo.pop()
        for imported in imports_in(text):
            if any(imported == f or imported.startswith(f + ".") for f in FORBIDDEN):
                found.setdefault(imported, name)
            elif imported.startswith("gateway") and imported not in seen and (path := source_of(imported)):
                seen.add(imported)
                todo.append((imported, path.read_text()))
    return found


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_imports_no_io(module):
    path = source_of(module)
    assert path is not None, f"{module}: no such module (rename it here too)"
    found = forbidden_imports(module, path.read_text())
    assert not found, f"{module} is a pure module but imports " + ", ".join(f"{k} (in {v})" for k, v in found.items())


@pytest.mark.parametrize("line", ["import redis", "import redis.asyncio as r", "from aiohttp import web",
                                  "import socket", "import asyncio", "from gateway import proxy",
                                  "def f():\n    import subprocess"])
def test_the_check_sees_an_io_import_added_to_a_pure_module(line):
    source = (ROOT / "gateway" / "keys.py").read_text() + "\n" + line + "\n"
    assert forbidden_imports("gateway.keys", source)


def test_importing_the_pure_modules_loads_no_io_module():
    # At run time too (catches an import the parse cannot see). gateway.store.codec is left out:
    # importing it runs gateway/store/__init__.py, which is the Redis layer.
    modules = [m for m in PURE if not m.startswith("gateway.store.")]
    code = (f"import sys; import {', '.join(modules)}; F = {FORBIDDEN!r}; "
            "bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in F)); "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
