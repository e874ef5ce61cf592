"""The page's HTTP side: strict headers, no inline code, only the files it needs."""

from __future__ import annotations

import re

from admin_api.app import STATIC_DIR
from admin_api.openapi import STATIC_FILES


async def test_page_is_served_with_a_strict_policy(stack):
    async with stack.http.get(stack.admin + "/") as resp:
        html = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        headers = resp.headers
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["base-uri"] == "'none'"
    assert "unsafe" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    # No inline script, inline style, event-handler attribute or third-party URL in the page.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


async def test_static_files_only_those_shipped(stack):
    # Every file in admin_api/static is served (index.html at /), and only those.
    assert {p.name for p in STATIC_DIR.iterdir()} == {*STATIC_FILES, "index.html"}
    kinds = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name, kind in ((n, kinds[n[n.rindex("."):]]) for n in STATIC_FILES):
        async with stack.http.get(f"{stack.admin}/static/{name}") as resp:
            assert resp.status == 200 and resp.content_type == kind, name
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    async with stack.http.get(f"{stack.admin}/favicon.ico") as resp:  # asked for by browsers and tools
        assert resp.status == 200 and resp.content_type == "image/svg+xml"
        assert await resp.read() == (STATIC_DIR / "favicon.svg").read_bytes()
    for bad in ("index.html", "..%2Fapp.py", "%2e%2e/app.py", "nope.js"):
        async with stack.http.get(f"{stack.admin}/static/{bad}") as resp:
            body = await resp.json()
            assert resp.status == 404 and body["error"]["code"] == "not_found", bad


def test_scripts_never_write_html_from_strings():
    for path in STATIC_DIR.glob("*.js"):
        script = re.sub(r"^\s*//.*$", "", path.read_text(), flags=re.M)  # code, not comments
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                     "localStorage", 'setAttribute("style"'):
            assert sink not in script, (path.name, sink)
