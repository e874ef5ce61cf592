"""Path confusion over raw sockets: the path the upstream receives is the path that was authorized.

Every target is sent as exact bytes. Each one is either refused (4xx, nothing reaches the
upstream) or forwarded with exactly the canonical path the access log says was authorized.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest

from gateway.paths import canonicalize
from gateway.scopes import Match, load_rules
from tests.support import SCOPES
from tests.security.conftest import GatewayProcess, RawResponse, check_forwarded_as_authorized, refused_by_parser

RULES = load_rules(SCOPES)


def raw_request(method: bytes, target: bytes, key: str | None) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: api.example", b"Connection: close"]
    if key is not None:
        lines.append(b"Authorization: Bearer " + key.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def send(gw: GatewayProcess, target: bytes, key: str | None, method: bytes = b"GET"):
    """Send one request; check the core invariant; return (response, what the upstream got or None)."""
    before = len(gw.recorder.received)
    resp = gw.exchange(raw_request(method, target, key))
    new = gw.recorder.received[before:]
    if refused_by_parser(resp):
        # Refused by the HTTP parser (400) or the target length limit (414), before the pipeline ran.
        assert resp.status in (400, 414), resp.raw[:300]
        assert new == [], new
        return resp, None
    got = check_forwarded_as_authorized(gw, resp)
    assert new == ([got] if got else []), new
    return resp, got


def assert_invalid(resp: RawResponse, got) -> None:
    assert got is None
    assert resp.status == 400 or (resp.status == 414 and refused_by_parser(resp)), resp.raw[:300]
    if not refused_by_parser(resp):  # the pipeline refused it, not the HTTP parser
        assert resp.json()["error"]["code"] == "invalid_path", resp.body


# Percent-encoded look-alikes of "/", "\\" and ".", upper and lower case hex.
LOOK_ALIKE_SLASHES = [b"%EF%BC%8F", b"%E2%88%95", b"%E2%81%84", b"%E2%A7%B8", b"%EF%BC%BC", b"%E2%88%96",
                      b"%EF%B9%A8", b"%E2%A7%B9", b"%E2%A7%B5"]
LOOK_ALIKE_DOTS = [b"%EF%BC%8E", b"%E2%80%A4", b"%EF%B9%92", b"%E3%80%82", b"%EF%BD%A1", b"%C2%B7", b"%E2%80%A7"]
LOOK_ALIKES = [*LOOK_ALIKE_SLASHES, *LOOK_ALIKE_DOTS, *(e.lower() for e in LOOK_ALIKE_SLASHES + LOOK_ALIKE_DOTS)]

# Targets the product contract says must be refused with 400 `invalid_path` (or that the HTTP
# parser refuses first). Each aims at a route the reader key can reach or at one next to it.
MUST_REFUSE = {
    "dot segments": [
        b"/v1/tasks/../status", b"/v1/tasks/%2e%2e/status", b"/v1/tasks/%2E%2E/status", b"/v1/tasks/%2E./status",
        b"/v1/tasks/.%2e/status", b"/v1/tasks/%2e./status", b"/v1/tasks/.%2E/status", b"/v1/tasks/./42",
        b"/v1/tasks/%2e/42", b"/v1/tasks/%2E/42", b"/v1/./tasks", b"/./v1/tasks", b"/v1/tasks/.", b"/v1/tasks/..",
        b"/v1/tasks/%2e%2e", b"/v1/tasks/42/..", b"/v1/tasks/42/.", b"/v1/reservations/../tasks",
        b"/v1/tasks/../../v1/tasks", b"/%2e%2e/v1/tasks", b"/../v1/tasks", b"/v1/status/..",
        b"/v1/properties/1/documents/../../../tasks", b"/v1/properties/1/documents/a/%2e%2e/b",
        b"/v1/properties/1/documents/./a",
    ],
    "encoded and raw separators": [
        b"/v1/tasks%2f42", b"/v1/tasks%2F42", b"/v1/tasks/42%2fcomplete", b"/v1%2ftasks", b"/v1/tasks/..%2fstatus",
        b"/v1/tasks/%2e%2e%2fstatus", b"/v1/tasks%5c42", b"/v1/tasks%5C42", b"/v1/tasks/..%5cstatus",
        b"/v1/tasks\\42", b"/v1\\tasks", b"/v1/tasks/..\\status", b"/v1/properties/1/documents/a%2fb",
        b"/v1/properties/1/documents/a%5cb", b"/v1/properties/1/documents/a\\b",
    ],
    "double slashes": [
        b"//v1/tasks", b"/v1//tasks", b"/v1/tasks//42", b"/v1/tasks//", b"///v1/tasks", b"//v1/status",
        b"/v1/properties/1/documents//a", b"/v1/properties/1/documents/a//b",
    ],
    "matrix parameters": [
        b"/v1/tasks;jsessionid=1", b"/v1/tasks/42;x=1", b"/v1;/tasks", b"/v1/tasks/..;/status", b"/v1/tasks;/42",
        b"/v1/tasks%3bx", b"/v1/tasks/42%3Bx", b"/v1/tasks/%3b", b"/v1/status;.js",
        b"/v1/properties/1/documents/a;b",
    ],
    "overlong and invalid UTF-8": [
        b"/v1/tasks/%c0%ae%c0%ae/status", b"/v1/tasks/%c0%ae", b"/v1/tasks/%c0%2e", b"/v1/tasks%c0%af42",
        b"/v1/tasks/%e0%80%ae%e0%80%ae", b"/v1/tasks%e0%80%af42", b"/v1/tasks/%ff", b"/v1/tasks/%fe%ff",
        b"/v1/tasks/%ed%a0%80", b"/v1/tasks/%f4%90%80%80", b"/v1/tasks/%c3", b"/v1/tasks/%c3%28",
        b"/v1/tasks/%80", b"/v1/tasks/%f8%88%80%80%80",
    ],
    "malformed escapes": [
        b"/v1/tasks/%", b"/v1/tasks/%2", b"/v1/tasks/%zz", b"/v1/tasks/%u002e%u002e", b"/v1/tasks/%%32%65",
        b"/v1/tasks/%2g",
    ],
    "absolute, authority and asterisk forms": [
        b"http://evil/v1/tasks", b"http://api.example/v1/tasks", b"https://api.example:443/v1/tasks",
        b"HTTP://evil/v1/tasks", b"http://evil@api.example/v1/tasks", b"http:/v1/tasks", b"api.example:443",
        b"api.example:80/v1/tasks", b"*", b"v1/tasks", b"evil/v1/tasks",
    ],
    "fragments": [
        b"/v1/tasks#x", b"/v1/status#/../tasks", b"/v1/tasks?x=1#y", b"/v1/tasks/42#", b"/v1/status#",
    ],
    "NUL, controls and spaces": [
        b"/v1/tasks\x00", b"/v1/tasks/4\x002", b"/v1/tasks\x01", b"/v1/tasks\x1b", b"/v1/tasks\x7f",
        b"/v1/tasks\t", b"/v1/ta sks", b"/v1/tasks\x0b", b"/v1/tasks\x0c", b"/v1/tasks\r", b"/v1/tasks%00",
        b"/v1/tasks/42%00.json", b"/v1/tasks/%0a", b"/v1/tasks/%0d%0aX-Org-Id:%20evil", b"/v1/tasks/%09",
        b"/v1/tasks/%7f", b"/v1/tasks?a=\x00", b"/v1/tasks?a=b c",
    ],
    "raw non-ASCII": [
        b"/v1/t\xd0\xb0sks", b"/v1/tasks/\xc3\xa9", b"/v1/tasks/\xff", b"/v1/tasks\xef\xbc\x8f42",
        b"/v1/tasks?q=\xe9",
    ],
    # Look-alikes of "/", "\\" and "." (a backend applying NFKC, Windows best-fit or a
    # transliteration reads them as separators or dots), percent-encoded and raw UTF-8.
    "look-alike separators": [
        *(pre + enc + post for enc in LOOK_ALIKES for pre, post in (
            (b"/v1/tasks", b"42"), (b"/v1/tasks/42", b"complete"), (b"/v1/tasks/", b""),
            (b"/v1/tasks/", b"/status"), (b"/v1/tasks/", b"..")
        )),
        *(b"/v1/tasks/" + enc + enc + b"/guests" for enc in LOOK_ALIKE_DOTS),
        *(b"/v1/tasks/" + enc.lower() + enc.lower() for enc in LOOK_ALIKE_DOTS),
        b"/v1/%EF%BD%94asks", b"/v1/tasks/42/%EF%BD%83omplete", b"/v1/%EF%BD%87uests",  # fullwidth letters
        b"/v1/tasks/%E2%80%A5", b"/v1/tasks/%E2%80%A6", b"/v1/tasks%EF%BC%9B", b"/v1/tasks/%EF%BC%852e",
        b"/v1/tasks/a%C2%A0b", b"/v1/tasks/%E3%80%80",
        b"/v1/tasks\xef\xbc\x8f..\xef\xbc\x8fguests", b"/v1/tasks/\xe2\x88\x95guests", b"/v1/\xef\xbc\x8e\xef\xbc\x8e",
        b"/v1/tasks/\xe2\x80\xa4\xe2\x80\xa4/guests", b"/v1/tasks\xef\xbc\xbcguests",
    ],
    "too long": [
        b"/v1/" + b"a/" * 70 + b"b",  # more segments than any rule could use
        b"/v1/tasks/" + b"a" * 9000,  # longer than the request-line limit
        b"/v1/properties/1/documents/" + b"a" * 20000,
    ],
}

MUST_REFUSE_CASES = [
    pytest.param(target, id=f"{group}:{target[:40]!r}") for group, targets in MUST_REFUSE.items() for target in targets
]


@pytest.mark.parametrize("target", MUST_REFUSE_CASES)
def test_ambiguous_targets_are_refused(gateway, target):
    resp, got = send(gateway, target, gateway.keys["reader"]["key"])
    assert_invalid(resp, got)


# Targets that are unambiguous, so they need not be refused; each must get exactly the answer
# below, and a forwarded one must arrive as exactly `forwarded` (request target incl. query).
RESOLVED = [
    # trailing slashes and case: different paths, no rule matches them
    (b"/v1/tasks/", 404, None),
    (b"/v1/tasks/42/", 404, None),
    (b"/v1/status/", 404, None),
    (b"/V1/TASKS", 404, None),
    (b"/v1/Tasks", 404, None),
    (b"/V1/tasks", 404, None),
    (b"/v1/TASKS/42", 404, None),
    (b"/v1/STATUS", 404, None),
    (b"/v1/%74asks", 200, b"/v1/tasks"),  # an encoded unreserved character is decoded, then authorized
    (b"/v1/tasks/%34%32", 200, b"/v1/tasks/42"),
    # rule prefixes never match a longer segment
    (b"/v1/tasksX", 404, None),
    (b"/v1/tasks-admin", 404, None),
    (b"/v1/tasks.json", 404, None),
    (b"/v1/tasks..", 404, None),
    (b"/v1/statusX", 404, None),
    (b"/v1/status.", 404, None),
    (b"/v1/tasks%20", 404, None),
    (b"/v1/tasks%23x", 404, None),
    (b"/v1/tasks%3fx=1", 404, None),
    (b"/v1/tasks/42/completeX", 404, None),
    (b"/v1/tasks/42/complete/x", 404, None),
    (b"/v1/reservations/upcomingX", 200, b"/v1/reservations/upcomingX"),  # {reservation_id}, same scope
    # non-ASCII letters are ordinary characters of a segment (look-alikes of "/", "\\", "." are refused)
    (b"/v1/t%d0%b0sks", 404, None),  # Cyrillic a
    (b"/v1/tasks/%d0%b0", 200, b"/v1/tasks/%D0%B0"),
    (b"/v1/tasks/caf%c3%a9", 200, b"/v1/tasks/caf%C3%A9"),
    (b"/v1/tasks/a%e2%80%93b", 200, b"/v1/tasks/a%E2%80%93b"),  # en dash: no decoder reads it as ASCII
    (b"/v1/%d1%82asks", 404, None),  # Cyrillic te
    (b"/v1/%d1%95tatus", 404, None),  # Cyrillic dze
    (b"/v1/tasks/...", 200, b"/v1/tasks/..."),  # three dots is a name, not a dot segment
    (b"/v1/tasks/.hidden", 200, b"/v1/tasks/.hidden"),
    (b"/v1/tasks/%252e%252e", 200, b"/v1/tasks/%252e%252e"),  # decoded once: the literal "%2e%2e"
    (b"/v1/tasks/%252f", 200, b"/v1/tasks/%252f"),
    (b"/v1/tasks/%255c", 200, b"/v1/tasks/%255c"),
    (b"/v1/tasks/a%20b", 200, b"/v1/tasks/a%20b"),
    (b"/v1/tasks/a+b", 200, b"/v1/tasks/a+b"),
    (b"/v1/tasks/%7e", 200, b"/v1/tasks/~"),
    (b'/v1/tasks/"', 200, b"/v1/tasks/%22"),
    # the query string is forwarded as sent, but never used to route or authorize
    (b"/v1/status?/../tasks", 200, b"/v1/status?/../tasks"),
    (b"/v1/status?x=/v1/tasks", 200, b"/v1/status?x=/v1/tasks"),
    (b"/v1/status?%2f..%2ftasks", 200, b"/v1/status?%2f..%2ftasks"),
    (b"/v1/status??/tasks", 200, b"/v1/status??/tasks"),
    (b"/v1/tasks?/../../guests", 200, b"/v1/tasks?/../../guests"),
    (b"/v1/tasks?", 200, b"/v1/tasks"),
    (b"/v1/guests?/../tasks", 403, None),
    # long but within every limit
    (b"/v1/tasks/" + b"a" * 8000, 200, b"/v1/tasks/" + b"a" * 8000),
    (b"/v1/properties/1/documents/" + b"d/" * 50 + b"f", 200, b"/v1/properties/1/documents/" + b"d/" * 50 + b"f"),
]


@pytest.mark.parametrize("target, status, forwarded", [
    pytest.param(t, s, f, id=repr(t[:48])) for t, s, f in RESOLVED
])
def test_unambiguous_targets_are_authorized_on_what_is_forwarded(gateway, target, status, forwarded):
    resp, got = send(gateway, target, gateway.keys["reader"]["key"])
    assert resp.status == status, resp.raw[:300]
    if forwarded is None:
        assert got is None
    else:
        assert got is not None and got.target.encode("latin-1") == forwarded, got


# Every target above, and the confusion shapes below aimed at routes the key cannot reach.
SHAPES = [
    "/v1/tasks/../{t}", "/v1/tasks/%2e%2e/{t}", "/v1/tasks/%2E%2E/{t}", "/v1/tasks/.%2e/{t}", "/v1/tasks/%2e./{t}",
    "/v1/tasks/..%2f{t}", "/v1/tasks%2f..%2f{t}", "/v1/tasks/..%5c{t}", "/v1/tasks\\..\\{t}", "/v1/tasks/..;/{t}",
    "/v1/tasks;/../{t}", "/v1/status/../{t}", "/v1/status?/../{t}", "/v1/status#/../{t}", "/v1/./{t}",
    "/v1/tasks/%c0%ae%c0%ae/{t}", "/v1/tasks/%c0%af..%c0%af{t}", "/v1/tasks/%252e%252e/{t}",
    "/v1/tasks/%ef%bc%8f..%ef%bc%8f{t}", "/v1/tasks/%e2%80%a4%e2%80%a4/{t}", "/v1/tasks/%2e%2e%2f{t}",
    "/v1/properties/1/documents/../../../{t}", "/v1/properties/1/documents/%2e%2e/%2e%2e/%2e%2e/{t}",
    "/v1/properties/1/documents/..%2f..%2f..%2f{t}", "/v1/properties/1/documents/%2e%2e%5c%2e%2e%5c%2e%2e%5c{t}",
    "/v1/tasks/1/..//{t}", "//v1/{t}", "/v1//{t}", "http://api.example/v1/{t}", "/v1/{t}%00", "/v1/{t}/",
    "/v1/{T}", "/v1/{t};x", "/v1/{t}%3b", "/v1/{t}#", "/v1/properties/1/documents/{t}",
]
FORBIDDEN_FOR_READER = ["guests", "guests/1", "messages", "messages/1", "guests/1/reservations"]


def key_may_reach(scopes: tuple[str, ...], method: str, path: str) -> bool:
    found = RULES.match(method, canonicalize(path).segments)
    return isinstance(found, Match) and (found.rule.public or found.rule.scope in scopes)


def assert_only_reachable_routes(gw: GatewayProcess, key_name: str, method: bytes, target: bytes) -> None:
    spec = gw.keys[key_name]
    resp, got = send(gw, target, spec["key"], method)
    if got is not None:
        assert resp.status == 200
        assert key_may_reach(spec["scopes"], got.method, got.path), (key_name, got.request_line)
        assert got.method == method.decode().upper()


@pytest.mark.parametrize("tail", FORBIDDEN_FOR_READER)
@pytest.mark.parametrize("shape", SHAPES)
def test_confusion_never_reaches_a_route_the_key_lacks(gateway, shape, tail):
    target = shape.replace("{t}", tail).replace("{T}", tail.upper()).encode()
    before = len(gateway.recorder.received)
    assert_only_reachable_routes(gateway, "reader", b"GET", target)
    for got in gateway.recorder.received[before:]:
        assert not got.path.startswith(("/v1/guests", "/v1/messages")), got.request_line


ALL_TARGETS = [t for targets in MUST_REFUSE.values() for t in targets] + [t for t, _, _ in RESOLVED]


@pytest.mark.parametrize("key_name, method", [
    ("admin", b"GET"),  # tasks:read only among the API scopes
    ("reader", b"DELETE"),  # no write scope at all
    ("reader", b"POST"),
])
def test_every_variant_with_a_key_lacking_scope(gateway, key_name, method):
    """Each variant again, with a key (or method) that lacks the scope most of them would need:
    whatever is forwarded is a route that key may reach, with the method that was authorized."""
    for target in ALL_TARGETS:
        assert_only_reachable_routes(gateway, key_name, method, target)


@pytest.mark.parametrize("target", [b"/v1/status", b"/v1/status?/../tasks", b"/v1/status/../tasks",
                                    b"/v1/status%2f..%2ftasks", b"/v1/tasks", b"/v1/tasks/..%2fstatus"])
def test_without_a_key_only_the_public_route_is_forwarded(gateway, target):
    resp, got = send(gateway, target, None)
    if got is not None:
        assert got.path == "/v1/status" and got.header("X-Org-Id") is None
    else:
        assert resp.status in (400, 401)


# ---- a key pasted into the path: refused, never forwarded, never logged --------------------

def _pct(text: str, case: str = "%{:02X}") -> str:
    return "".join(case.format(b) for b in text.encode())


def key_in_path_targets(key: str) -> list[str]:
    body = key[len("sop_"):]
    enc = _pct(key)
    return [
        f"/v1/tasks/{key}", f"/v1/{key}/tasks", f"/{key}", f"/{key}/", f"/v1/tasks/{key}/complete",
        f"/v1/tasks/foo-{key}", f"/v1/tasks/{key}-bar", f"/v1/tasks/x{key}y", f"/v1/tasks/{key}{key}",
        f"/v1/tasks/id.{key}.json", f"/v1/tasks/{key}?page=2", f"/v1/status/{key}", f"/v1/tasks/42/{key}/",
        f"/v1/properties/1/documents/a/b/{key}", f"/v1/tasks/{enc}", f"/v1/tasks/{_pct(key, '%{:02x}')}",
        f"/v1/tasks/%73op_{body}", f"/v1/tasks/sop%5F{body}", f"/v1/tasks/s%6Fp_{body[:10]}%{ord(body[10]):02X}{body[11:]}",
        f"/v1/tasks/{quote(enc, safe='')}", f"/v1/tasks/{quote(quote(enc, safe=''), safe='')}",
        f"/v1/tasks/%2573op_{body}", f"/v1/tasks/a%20{key}", f"/v1/tasks/%E4%BB%BB{key}", f"/v1/tasks/{key}%7E",
    ]


def _assert_key_refused_unlogged(gw: GatewayProcess, resp: RawResponse, key: str, before: int) -> dict:
    assert resp.status == 400, resp.raw[:300]
    assert resp.json()["error"]["code"] == "api_key_in_path", resp.body
    assert gw.recorder.received[before:] == []
    assert key[4:].encode() not in resp.raw
    entry = gw.log_entry(resp.header("X-Request-Id"))
    assert entry["outcome"] == "api_key_in_path" and entry["status"] == 400, entry
    assert key[4:] not in str(entry) and "[redacted]" in entry["path"], entry
    return entry


@pytest.mark.parametrize("which", ["reader", "generated"])
@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
def test_a_key_in_the_path_is_refused_and_never_logged(gateway, which, method):
    from gateway.keys import generate_key

    key = gateway.keys["reader"]["key"] if which == "reader" else generate_key()
    for target in key_in_path_targets(key):
        for header_key in (None, gateway.keys["writer"]["key"]):
            before = len(gateway.recorder.received)
            resp = gateway.exchange(raw_request(method.encode(), target.encode(), header_key))
            if method == "HEAD":  # no body to read the code from: the access log has it
                assert resp.status == 400 and gateway.recorder.received[before:] == [], (target, resp.raw[:300])
                entry = gateway.log_entry(resp.header("X-Request-Id"))
                assert entry["outcome"] == "api_key_in_path" and key[4:] not in str(entry), entry
            else:
                _assert_key_refused_unlogged(gateway, resp, key, before)
    time.sleep(0.2)  # access-log lines are written in batches
    assert key[4:] not in gateway.all_logs()


@pytest.mark.parametrize("target", [
    "/v1/tasks/sop_short", "/v1/tasks/SOP_" + "a" * 36, "/v1/tasks/sop-" + "a" * 36, "/v1/tasks/sop_" + "a" * 35,
    "/v1/tasks/sop_" + "a" * 20 + "-" + "a" * 16, "/v1/tasks/%2573op_short",
])
def test_what_is_not_shaped_like_a_key_is_forwarded(gateway, target):
    resp, got = send(gateway, target.encode(), gateway.keys["reader"]["key"])
    assert resp.status == 200 and got is not None, resp.raw[:300]


# ---- a second path in a header (issue #12): WebDAV's Destination --------------------------------

@pytest.mark.parametrize("method", [b"COPY", b"MOVE", b"PROPFIND", b"PROPPATCH", b"MKCOL", b"LOCK", b"UNLOCK"])
@pytest.mark.parametrize("target", [b"/v1/tasks/42", b"/v1/tasks", b"/v1/status"])
@pytest.mark.parametrize("key_name", ["writer", "admin", None])
def test_webdav_methods_with_a_destination_are_never_forwarded(gateway, method, target, key_name):
    """The gateway authorizes the request path only; COPY and MOVE would act on a second one, the
    Destination header. No rule may name them (scopes.py METHODS), so whatever the key, they get
    405 (401 without a key) and nothing reaches the upstream."""
    key = gateway.keys[key_name]["key"] if key_name else None
    head = raw_request(method, target, key)[:-2]
    raw = head + b"Destination: /v1/admin/secrets\r\nOverwrite: T\r\n\r\n"
    before = len(gateway.recorder.received)
    resp = gateway.exchange(raw)
    assert gateway.recorder.received[before:] == []
    if key is None:
        assert resp.status == 401 and resp.json()["error"]["code"] == "missing_api_key", resp.raw[:300]
        return
    assert resp.status == 405, resp.raw[:300]
    assert resp.json()["error"]["code"] == "method_not_allowed"
    assert method.decode() not in resp.header("Allow")
