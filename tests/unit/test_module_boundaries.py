"""Which modules a process loads: the admin API makes request ids and error envelopes without
the proxy's HTTP server or upstream client (gateway.envelope imports neither, nor aiohttp)."""

from __future__ import annotations

import subprocess
import sys

PROXY_SIDE = ("gateway.httpserver", "gateway.upstream", "gateway.proxy", "gateway.forward_auth")


def loaded_after(statement: str, names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` a fresh interpreter has loaded after running ``statement``."""
    code = f"import sys\n{statement}\nprint(' '.join(n for n in {names!r} if n in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_envelope_loads_no_http_server_and_no_aiohttp():
    assert loaded_after("import gateway.envelope", PROXY_SIDE + ("aiohttp", "gateway.decision")) == []


def test_the_admin_api_loads_neither_the_proxy_nor_its_upstream_client():
    assert loaded_after("import admin_api.app", PROXY_SIDE) == []


def test_nothing_outside_the_store_imports_redis():
    """The store hides Redis: its faults reach callers as gateway.store.Unavailable / FAULTS."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    found = []
    for package in ("gateway", "admin_api"):
        for path in sorted((root / package).rglob("*.py")):
            if (root / "gateway" / "store") in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                found += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] == "redis"]
    assert found == []
