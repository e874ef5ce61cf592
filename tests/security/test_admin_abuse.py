"""Abuse of the admin API: every refusal is a clear 4xx in the JSON envelope, and nothing is written.

Each refusal is checked against the real redis-server: the keyspace (every key, dumped) and the
number of write commands it has run are the same before and after. The admin API runs in-process
on a real socket (no gateway beside it, so no background writes blur the count); the last tests
run the real `gateway admin` process (tests/security/conftest.py: admin_process) to read what it logs.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from yarl import URL

from admin_api.app import make_admin_app
from gateway.config import AdminSettings
from gateway.keys import generate_key
from tests.support import OPERATOR_TOKEN, SCOPES
from tests.support.rawhttp import raw_request
from tests.support.stack import request_json

CREATE = "/v1/orgs/acme/api-keys"
VALID = {"name": "ci", "scopes": ["tasks:read"]}
JSON = {"Content-Type": "application/json"}
# What no admin-API request may do when it is refused: Redis' own list of writing commands, plus
# scripts (create and revoke are Lua) and publishing (revocations).
_ALWAYS_WRITES = {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "publish", "spublish"}
# Connection housekeeping, and the INFO / COMMAND / SCAN / DUMP calls these tests make themselves.
_HOUSEKEEPING = ("info", "ping", "config", "command", "client", "hello", "select", "auth", "script", "scan", "dump")


class AdminClient:
    """The admin API on a real socket, plus what the real Redis saw."""

    def __init__(self, url: str, http: aiohttp.ClientSession, redis) -> None:
        self.url, self.http, self.redis = url, http, redis
        self.last = None  # the last response (closed; headers still readable)
        self.write_commands = {c.decode() for c in redis.command_list(category="write")} | _ALWAYS_WRITES

    async def call(self, method: str, path: str, token: str | None = OPERATOR_TOKEN, **kw) -> tuple[int, Any, Any]:
        """``path`` is sent exactly as written (already percent-encoded, dots not resolved)."""
        status, body, self.last = await request_json(self.http, method, URL(self.url + path, encoded=True), token, **kw)
        return status, body, self.last

    async def create(self, org: str = "acme", scopes=("tasks:read",), name: str = "k") -> dict:
        status, body, _ = await self.call("POST", f"/v1/orgs/{org}/api-keys",
                                          json={"name": name, "scopes": list(scopes)})
        assert status == 201, body
        return body

    def keyspace(self) -> dict[bytes, bytes]:
        """Every key in Redis with its serialized value: any write shows up here."""
        return {key: self.redis.dump(key) for key in sorted(self.redis.scan_iter(count=1000))}

    def calls(self, *, writes: bool) -> int:
        """Commands run since the last reset: writing ones, or every data command."""
        total = 0
        for name, stats in self.redis.info("commandstats").items():
            command = name.removeprefix("cmdstat_").split("|")[0]
            if command in _HOUSEKEEPING:
                continue
            if not writes or command in self.write_commands:
                total += stats["calls"]
        return total


@pytest.fixture
async def admin(aiohttp_server, redis_url, redis_server, clock) -> AdminClient:
    # No last-used flush while a test runs: a refused request must not write, and the uses of
    # org keys are written by the flusher, not by the request (flushed at teardown).
    app = make_admin_app(AdminSettings(redis=redis_url, scopes=str(SCOPES), operator_tokens=(OPERATOR_TOKEN,),
                                       reload_interval=0.0, flush_interval=3600.0), clock=clock)
    server = await aiohttp_server(app)
    # The start-up backfill of the activity log writes its marker once: done before any test
    # counts the writes a refused request makes.
    for _ in range(500):
        if redis_server.client.exists("gw:activity:backfilled"):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the admin API's start-up backfill did not finish")
    async with aiohttp.ClientSession() as http:
        yield AdminClient(str(server.make_url("")).rstrip("/"), http, redis_server.client)


@dataclass
class Keys:
    reader: dict  # acme, api_keys:read
    manager: dict  # acme, api_keys:manage + tasks:read
    foreign: dict  # globex, api_keys:manage
    victim: dict  # globex, a plain key that the others try to reach


@pytest.fixture
async def keys(admin) -> Keys:
    made = Keys(
        reader=await admin.create("acme", ["api_keys:read", "tasks:read"], "reader"),
        manager=await admin.create("acme", ["api_keys:manage", "tasks:read"], "manager"),
        foreign=await admin.create("globex", ["api_keys:manage", "tasks:read"], "globex admin"),
        victim=await admin.create("globex", ["tasks:read", "tasks:write"], "globex integration"),
    )
    admin.redis.config_resetstat()
    return made


def assert_envelope(status: int, body: Any, resp, expected_status: int, code: str | None = None) -> dict:
    """A clear 4xx: the JSON envelope, its request id in the header, no caching."""
    assert status == expected_status, body
    assert resp.content_type == "application/json", body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == resp.headers["X-Request-Id"]
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    if code is not None:
        assert error["code"] == code, error
    if expected_status == 401:
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="api"')
    return error


async def refused(admin: AdminClient, expected_status: int, code: str | None, method: str, path: str,
                  **kw) -> dict:
    """Make the call, check the envelope, and check that Redis was not written to."""
    before, writes = admin.keyspace(), admin.calls(writes=True)
    status, body, resp = await admin.call(method, path, **kw)
    error = assert_envelope(status, body, resp, expected_status, code)
    assert admin.calls(writes=True) == writes, "a refused request ran a Redis write command"
    assert admin.keyspace() == before, "a refused request changed Redis"
    return error


async def assert_active(admin: AdminClient, key: dict) -> None:
    status, body, _ = await admin.call("GET", f"/v1/orgs/{key['org_id']}/api-keys/{key['id']}")
    assert status == 200 and body["status"] == "active" and body["revoked_at"] is None, body


# ---- org isolation -------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["reader", "manager"])
async def test_another_orgs_keys_answer_404_and_stay_active(admin, keys, who):
    token = getattr(keys, who)["key"]
    victim = keys.victim["id"]
    for method, path, code in [
        ("GET", "/v1/orgs/globex/api-keys", "org_not_found"),
        ("GET", "/v1/orgs/globex/api-keys?include_revoked=true", "org_not_found"),
        ("GET", f"/v1/orgs/globex/api-keys/{victim}", "org_not_found"),
        ("GET", f"/v1/orgs/acme/api-keys/{victim}", "key_not_found"),  # own org in the path, foreign id
        ("GET", "/v1/orgs/globex/audit-events", "org_not_found"),
        ("GET", "/v1/orgs/Acme/api-keys", "org_not_found"),  # org ids are case-sensitive
        ("GET", "/v1/orgs/acme./api-keys", "org_not_found"),
    ]:
        await refused(admin, 404, code, method, path, token=token)
    await refused(admin, 404, "org_not_found", "POST", f"/v1/orgs/globex/api-keys/{victim}/revoke", token=token)
    # In its own org a reader is refused for scope; a manager finds no such key.
    status, code = (403, "insufficient_scope") if who == "reader" else (404, "key_not_found")
    await refused(admin, status, code, "POST", f"/v1/orgs/acme/api-keys/{victim}/revoke", token=token)
    await refused(admin, 404, "org_not_found", "POST", "/v1/orgs/globex/api-keys", token=token, json=VALID)
    await assert_active(admin, keys.victim)


async def test_a_foreign_key_id_looks_exactly_like_a_missing_one(admin, keys):
    token = keys.manager["key"]
    missing = await refused(admin, 404, "key_not_found", "GET", "/v1/orgs/acme/api-keys/key_0000000000000000",
                            token=token)
    foreign = await refused(admin, 404, "key_not_found", "GET", f"/v1/orgs/acme/api-keys/{keys.victim['id']}",
                            token=token)
    assert {**missing, "request_id": ""} == {**foreign, "request_id": ""}


async def test_org_id_in_the_body_cannot_pick_another_org(admin, keys):
    error = await refused(admin, 400, "validation_failed", "POST", CREATE, token=keys.manager["key"],
                          json={**VALID, "org_id": "globex"})
    assert error["field"] == "org_id"


async def test_a_cursor_from_another_org_lists_only_the_own_org(admin, keys):
    # The cursor names a globex key; used on acme it is only a position, never a way across.
    status, page, _ = await admin.call("GET", "/v1/orgs/globex/api-keys?limit=1")
    assert status == 200 and page["next_cursor"]
    status, page, _ = await admin.call("GET", f"/v1/orgs/acme/api-keys?cursor={page['next_cursor']}",
                                       token=keys.reader["key"])
    assert status == 200 and {k["org_id"] for k in page["data"]} <= {"acme"}


# ---- scopes: no escalation -----------------------------------------------------------------

@pytest.mark.parametrize("scopes, refused_scopes", [
    (["tasks:write"], ["tasks:write"]),
    (["tasks:read", "reservations:write"], ["reservations:write"]),
    (["guests:read", "guests:read"], ["guests:read"]),
    (["tasks:read", "api_keys:manage", "messages:write"], ["messages:write"]),
])
async def test_an_org_key_cannot_grant_scopes_it_lacks(admin, keys, scopes, refused_scopes):
    error = await refused(admin, 403, "scope_not_grantable", "POST", CREATE, token=keys.manager["key"],
                          json={"name": "escalate", "scopes": scopes})
    assert error["scopes"] == refused_scopes


async def test_unknown_scopes_are_named_before_grantability(admin, keys):
    error = await refused(admin, 400, "validation_failed", "POST", CREATE, token=keys.manager["key"],
                          json={"name": "x", "scopes": ["tasks:write", "admin:all", "*"]})
    assert error["field"] == "scopes" and error["unknown_scopes"] == ["admin:all", "*"]


async def test_a_read_key_cannot_create_or_revoke(admin, keys):
    token = keys.reader["key"]
    for method, path, kw in [
        ("POST", CREATE, {"json": {"name": "x", "scopes": ["tasks:read"]}}),  # scopes it holds
        ("POST", CREATE, {"json": {"name": "x", "scopes": ["api_keys:read"]}}),
        ("POST", f"/v1/orgs/acme/api-keys/{keys.manager['id']}/revoke", {}),
        ("POST", f"/v1/orgs/acme/api-keys/{keys.reader['id']}/revoke", {}),  # not even itself
    ]:
        status, body, resp = await admin.call(method, path, token=token, **kw)
        error = assert_envelope(status, body, resp, 403, "insufficient_scope")
        assert error["required_scope"] == "api_keys:manage"
        assert resp.headers["WWW-Authenticate"] == (
            'Bearer realm="api", error="insufficient_scope", scope="api_keys:manage"')
    await assert_active(admin, keys.manager)
    await assert_active(admin, keys.reader)


async def test_a_key_without_admin_scopes_reads_nothing(admin, keys):
    plain = await admin.create("acme", ["tasks:read", "tasks:write"], "plain")
    for method, path in [("GET", "/v1/orgs/acme/api-keys"), ("GET", f"/v1/orgs/acme/api-keys/{plain['id']}"),
                         ("GET", "/v1/orgs/acme/audit-events"), ("GET", "/v1/permissions")]:
        error = await refused(admin, 403, "insufficient_scope", method, path, token=plain["key"])
        assert error["required_scope"] == "api_keys:read"


# ---- bodies ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, code, field", [
    (b"[]", "validation_failed", "body"),
    (b'[{"name": "x", "scopes": ["tasks:read"]}]', "validation_failed", "body"),
    (b'"name"', "validation_failed", "body"),
    (b"null", "validation_failed", "body"),
    (b"42", "validation_failed", "body"),
    (b"true", "validation_failed", "body"),
    (b"", "invalid_json", None),
    (b"   \n", "invalid_json", None),
    (b"{", "invalid_json", None),
    (b'{"name": "x", "scopes": ["tasks:read"]', "invalid_json", None),
    (b'{"name": "x", "scopes": ["tasks:read"]}{}', "invalid_json", None),
    (b'{"name": "x", "scopes": ["tasks:read"]} x', "invalid_json", None),
    (b"{'name': 'x', 'scopes': ['tasks:read']}", "invalid_json", None),
    (b'{"name": "x", /* c */ "scopes": ["tasks:read"]}', "invalid_json", None),
    (b'{"name": "x", "scopes": ["tasks:read"],}', "invalid_json", None),
    (b'{"name": NaN, "scopes": ["tasks:read"]}', "invalid_json", None),
    (b'\xef\xbb\xbf{"name": "x", "scopes": ["tasks:read"]}', "invalid_json", None),  # BOM
    (b'{"name": "\xff\xfe", "scopes": ["tasks:read"]}', "invalid_json", None),  # invalid UTF-8 (was a 500)
    (b'{"name": "caf\xe9", "scopes": ["tasks:read"]}', "invalid_json", None),  # Latin-1
    (b'{"name": "\xc0\xae", "scopes": ["tasks:read"]}', "invalid_json", None),  # overlong
    (b'{"name": "\\ud800", "scopes": ["tasks:read"]}', "invalid_json", None),  # lone surrogate
    (b"[" * 30_000 + b"]" * 30_000, "validation_failed", "body"),
    (b'{"name": "x", "scopes": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "validation_failed", "scopes"),
    # duplicate fields: one parser keeps the first, another the last (was accepted, last one won)
    (b'{"name": "a", "name": "b", "scopes": ["tasks:read"]}', "validation_failed", "name"),
    (b'{"name": "a", "scopes": ["tasks:read"], "scopes": ["api_keys:manage"]}', "validation_failed", "scopes"),
    (b'{"name": "a", "scopes": ["tasks:read"], "expires_in": "30d", "expires_in": "never"}',
     "validation_failed", "expires_in"),
    # unknown fields, including ones that name server-side state
    (b'{"name": "x", "scopes": ["tasks:read"], "admin": true}', "validation_failed", "admin"),
    (b'{"name": "x", "scopes": ["tasks:read"], "Name": "y"}', "validation_failed", "Name"),
    (b'{"name": "x", "scopes": ["tasks:read"], "key": "sop_x"}', "validation_failed", "key"),
    (b'{"name": "x", "scopes": ["tasks:read"], "id": "key_x"}', "validation_failed", "id"),
    (b'{"name": "x", "scopes": ["tasks:read"], "created_by": "operator"}', "validation_failed", "created_by"),
    (b'{"name": "x", "scopes": ["tasks:read"], "expires_at": null}', "validation_failed", "expires_at"),
    (b'{"name": "x", "scopes": ["tasks:read"], "__proto__": {}}', "validation_failed", "__proto__"),
    (b'{"name": "x", "scopes": ["tasks:read"], "": 1}', "validation_failed", None),
    # wrong types
    (b'{"name": null, "scopes": ["tasks:read"]}', "validation_failed", "name"),
    (b'{"name": 1, "scopes": ["tasks:read"]}', "validation_failed", "name"),
    (b'{"name": ["x"], "scopes": ["tasks:read"]}', "validation_failed", "name"),
    (b'{"name": {"x": 1}, "scopes": ["tasks:read"]}', "validation_failed", "name"),
    (b'{"name": true, "scopes": ["tasks:read"]}', "validation_failed", "name"),
    (b'{"name": 1e999, "scopes": ["tasks:read"]}', "validation_failed", "name"),
    (b'{"name": "x", "scopes": "tasks:read"}', "validation_failed", "scopes"),
    (b'{"name": "x", "scopes": {"tasks:read": true}}', "validation_failed", "scopes"),
    (b'{"name": "x", "scopes": null}', "validation_failed", "scopes"),
    (b'{"name": "x", "scopes": [1]}', "validation_failed", "scopes"),
    (b'{"name": "x", "scopes": [null]}', "validation_failed", "scopes"),
    (b'{"name": "x", "scopes": [["tasks:read"]]}', "validation_failed", "scopes"),
    (b'{"name": "x", "scopes": ["tasks:read"], "expires_in": 30}', "validation_failed", "expires_in"),
    (b'{"name": "x", "scopes": ["tasks:read"], "expires_in": null}', "validation_failed", "expires_in"),
    (b'{"name": "x", "scopes": ["tasks:read"], "expires_in": "30D"}', "validation_failed", "expires_in"),
    (b'{"name": "x", "scopes": ["tasks:read"], "expires_in": " 30d"}', "validation_failed", "expires_in"),
    (b'{"name": "x", "scopes": ["tasks:read"], "expires_in": "-1d"}', "validation_failed", "expires_in"),
    (b'{"name": "x", "scopes": [' + b", ".join([b'"tasks:read"'] * 201) + b"]}", "validation_failed", "scopes"),
    (b'{"scopes": ["tasks:read"]}', "validation_failed", "name"),
], ids=lambda v: (v[:40].decode("latin-1") + f"...({len(v)} bytes)" if len(v) > 40 else None)
    if isinstance(v, bytes) else None)
async def test_malformed_bodies_are_refused(admin, raw, code, field):
    error = await refused(admin, 400, code, "POST", CREATE, data=raw, headers=JSON)
    if field is not None:
        assert error["field"] == field


async def test_a_body_of_exactly_64_kib_is_accepted(admin):
    body = msgspec.json.encode(VALID)
    body = body[:-1] + b" " * (64 * 1024 - len(body)) + b"}"
    assert len(body) == 64 * 1024
    status, created, _ = await admin.call("POST", CREATE, data=body, headers=JSON)
    assert status == 201, created


async def _chunks(data: bytes, size: int = 4096):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("how", ["content-length", "chunked", "content-length-lies", "gzip-bomb"])
async def test_bodies_over_64_kib_are_413(admin, how):
    big = b'{"name": "x", "scopes": ["tasks:read"]}'[:-1] + b" " * (64 * 1024) + b"}"
    headers = dict(JSON)
    if how == "content-length":
        data = big
    elif how == "chunked":
        data = _chunks(big)  # Transfer-Encoding: chunked, no Content-Length
    elif how == "content-length-lies":  # announces 1 TB: refused before a byte is read
        headers["Content-Length"] = str(10**12)
        data = b""
    else:  # 1 MiB of JSON whitespace in a 1 KiB gzip body
        headers["Content-Encoding"] = "gzip"
        data = gzip.compress(big[:-1] + b" " * (1024 * 1024) + b"}")
        assert len(data) < 64 * 1024
    if how == "content-length-lies":
        # Only the head and one byte are sent: the answer must not wait for the rest.
        before = admin.keyspace()  # the activity log's backfill marker, nothing else
        reader, writer = await asyncio.open_connection(*admin.url.removeprefix("http://").split(":"))
        writer.write((f"POST {CREATE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {10**12}\r\n\r\n{{").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
        body = msgspec.json.decode(await asyncio.wait_for(reader.readexactly(length), 5))
        writer.close()
        assert head.startswith(b"HTTP/1.1 413 ") and body["error"]["code"] == "payload_too_large", head + b"%r" % body
        assert admin.keyspace() == before and list(before) == [b"gw:activity:backfilled"]
        return
    error = await refused(admin, 413, "payload_too_large", "POST", CREATE, data=data, headers=headers)
    assert "65536" in error["message"]


@pytest.mark.parametrize("encoding, data", [
    ("gzip", b"this is not gzip"),
    ("gzip", b"\x1f\x8b\x08\x00" + b"\xff" * 40),
    ("deflate", b"\x00\x01\x02"),
], ids=["not-gzip", "corrupt-gzip", "not-deflate"])
async def test_a_body_that_is_not_what_its_encoding_says_is_400(admin, encoding, data):
    # Caught by the handler (was a 500) or, when the first bytes already fail, by aiohttp's
    # parser before any handler runs (answered with the JSON envelope by gateway/aiohttp_runner.py: see the test at the end).
    before = admin.keyspace()
    status, body, resp = await admin.call("POST", CREATE, data=data, headers={**JSON, "Content-Encoding": encoding})
    assert status == 400, body
    if resp.content_type == "application/json":
        assert_envelope(status, body, resp, 400, "bad_request")
    assert admin.keyspace() == before


# ---- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "nul\x00byte", "\x00", "bell\x07", "esc\x1b[31mred", "del\x7f", "c1\x85next-line", "csi\x9b",
    "tab\tinside", "cr\rinside", "vt\x0binside",
    "line\u2028separator", "para\u2029separator",
    "\u202aLRE", "\u202bRLE", "pop\u202c", "\u202dLRO", "evil\u202egpj.exe", "\u2066LRI", "\u2067RLI",
    "\u2068FSI", "PDI\u2069",
    "", " ", "\t\n ", "\u3000", "\u00a0\u2002\u205f", "\u2028",
    "x" * 101, " " + "x" * 101 + " ", "x" * 10_000, "é" * 101,
], ids=lambda name: ascii(name[:20]) + (f"...({len(name)} chars)" if len(name) > 20 else ""))
async def test_bad_names_are_refused(admin, name):
    error = await refused(admin, 400, "validation_failed", "POST", CREATE, json={**VALID, "name": name})
    assert error["field"] == "name"
    assert name.strip() == "" or name.strip() not in error["message"]  # the name is not echoed


@pytest.mark.parametrize("name, stored", [
    ("x" * 100, "x" * 100),
    ("  " + "x" * 100 + "\n\t\u3000", "x" * 100),  # trimmed first, then counted
    ("<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)>"),
    ("מפתח ראשי", "מפתח ראשי"),  # right-to-left text is fine; only the overrides are refused
    ("🔑 prod", "🔑 prod"),
    ("e\u0301", "e\u0301"),
], ids=["100-chars", "trimmed-to-100", "html", "right-to-left", "emoji", "combining-accent"])
async def test_unusual_but_valid_names_are_stored_as_sent(admin, name, stored):
    status, body, _ = await admin.call("POST", CREATE, json={**VALID, "name": name})
    assert status == 201 and body["name"] == stored


# ---- content types -------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json",
    "application/json-patch+json", "application/vnd.api+json", "application/octet-stream",
    "application/json; charset=latin-1", "application/json; charset=utf-16", "application/json; charset=iso-8859-1",
    None,
])
async def test_only_utf8_json_is_accepted(admin, content_type):
    data = msgspec.json.encode(VALID)
    if content_type is None:
        kw = {"data": data, "skip_auto_headers": ["Content-Type"]}
    else:
        kw = {"data": data, "headers": {"Content-Type": content_type}}
    await refused(admin, 415, "unsupported_media_type", "POST", CREATE, **kw)


async def test_form_fields_are_not_json(admin):
    await refused(admin, 415, "unsupported_media_type", "POST", CREATE,
                  data={"name": "x", "scopes": "tasks:read"})


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json; charset=UTF-8",
                                          "Application/JSON", "application/json;charset=utf8"])
async def test_json_spellings_that_mean_utf8_json_are_accepted(admin, content_type):
    status, body, _ = await admin.call("POST", CREATE, data=msgspec.json.encode(VALID),
                                       headers={"Content-Type": content_type})
    assert status == 201, body


# ---- ids in the path -----------------------------------------------------------------------

BAD_ORGS = ["..", "%2e%2e", ".", "-acme", "_acme", ".hidden", "a" * 65, "a" * 1000, "%C3%A4", "acme%0A",
            "acme%00", "acme%20", "%20acme", "ac%2Fme", "ac%5Cme", "ac%7Bme%7D", "ac:me", "acme%3B", "*"]


@pytest.mark.parametrize("org", BAD_ORGS)
async def test_invalid_org_ids_are_404_for_every_operation(admin, org):
    for method, path, kw in [
        ("POST", f"/v1/orgs/{org}/api-keys", {"json": VALID}),
        ("GET", f"/v1/orgs/{org}/api-keys", {}),
        ("GET", f"/v1/orgs/{org}/api-keys/key_0000000000000000", {}),
        ("POST", f"/v1/orgs/{org}/api-keys/key_0000000000000000/revoke", {}),
        ("GET", f"/v1/orgs/{org}/audit-events", {}),
    ]:
        await refused(admin, 404, None, method, path, **kw)


async def test_dot_segments_in_the_raw_target_do_not_reach_another_org(admin, keys):
    # Sent byte for byte (clients would resolve the dots first).
    host = admin.url.removeprefix("http://")
    for target in ("/v1/orgs/../api-keys", "/v1/orgs/globex/../acme/api-keys", "/v1/orgs/acme/../globex/api-keys",
                   "/v1/orgs/acme/api-keys/../../globex/api-keys", "/v1/orgs/%2e%2e/globex/api-keys",
                   f"/v1/orgs/acme/api-keys/..%2F..%2Fglobex%2Fapi-keys%2F{keys.victim['id']}"):
        resp = await raw_request(admin.url, (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {keys.manager['key']}\r\n"
            "Connection: close\r\n\r\n").encode())
        assert resp.status == 404, (target, resp.body)
        assert resp.json()["error"]["code"] in ("org_not_found", "key_not_found", "not_found")
        assert b"globex" not in resp.body and keys.victim["id"].encode() not in resp.body


BAD_KEY_IDS = ["nope", "key_", "key_" + "a" * 61, "KEY_0000000000000000", "key_00000000-0000", "key_0000%0A",
               "key_%C3%A4", "%2e%2e", "key_0000%2F0000", "key_0000%00", "key_0000%20", "sop_x", "key_abc:audit",
               "*"]


@pytest.mark.parametrize("key_id", BAD_KEY_IDS)
async def test_malformed_key_ids_are_404_without_touching_redis(admin, keys, key_id):
    for method, path in [("GET", f"/v1/orgs/acme/api-keys/{key_id}"),
                         ("POST", f"/v1/orgs/acme/api-keys/{key_id}/revoke")]:
        admin.redis.config_resetstat()
        await refused(admin, 404, None, method, path)  # operator: no Redis call for the credential either
        assert admin.calls(writes=False) == 0, admin.redis.info("commandstats")


# ---- query parameters ----------------------------------------------------------------------

@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=1000", "limit"), ("limit=-1", "limit"),
    ("limit=abc", "limit"), ("limit=1.5", "limit"), ("limit=1e1", "limit"), ("limit=", "limit"),
    ("limit=%205", "limit"), ("limit=5_0", "limit"), ("limit=%D9%A5", "limit"), ("limit=0x10", "limit"),
    ("limit=99999999999999999999999", "limit"), ("limit=1&limit=1000", "limit"), ("limit=1000&limit=1", "limit"),
    ("include_revoked=maybe", "include_revoked"), ("include_revoked=1", "include_revoked"),
    ("include_revoked=yes", "include_revoked"), ("include_revoked=", "include_revoked"),
    ("include_revoked=false&include_revoked=true", "include_revoked"),
    ("cursor=garbage", "cursor"), ("cursor=%00", "cursor"), ("cursor=" + "A" * 4000, "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b"1:nokey").decode(), "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b"x:key_0000000000000000").decode(), "cursor"),
    ("cursor=" + base64.urlsafe_b64encode(b"\xff\xfe").decode(), "cursor"),
    ("cursor=a&cursor=b", "cursor"),
])
async def test_bad_list_parameters_are_400(admin, keys, query, field):
    error = await refused(admin, 400, "validation_failed", "GET", f"/v1/orgs/acme/api-keys?{query}",
                          token=keys.reader["key"])
    assert error["field"] == field


@pytest.mark.parametrize("query", ["", "limit=1", "limit=100", "limit=050", "include_revoked=TRUE",
                                   "include_revoked=False", "cursor=", "unknown=1&api_key=nope", "q=x"])
async def test_good_and_unknown_list_parameters_are_fine(admin, keys, query):
    status, body, _ = await admin.call("GET", f"/v1/orgs/acme/api-keys?{query}", token=keys.reader["key"])
    assert status == 200, body


# ---- methods -------------------------------------------------------------------------------

ROUTES = {
    "/v1/me": "GET, HEAD",
    "/v1/permissions": "GET, HEAD",
    "/v1/orgs/acme/api-keys": "GET, HEAD, POST",
    "/v1/orgs/acme/api-keys/key_0000000000000000": "GET, HEAD, PATCH",
    "/v1/orgs/acme/api-keys/key_0000000000000000/revoke": "POST",
    "/v1/orgs/acme/api-keys/key_0000000000000000/roll": "POST",
    "/v1/orgs/acme/audit-events": "GET, HEAD",
    "/openapi.json": "GET, HEAD",
    "/": "GET, HEAD",
    "/static/app.js": "GET, HEAD",
    "/favicon.ico": "GET, HEAD",
}


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"])
@pytest.mark.parametrize("token", [OPERATOR_TOKEN, None], ids=["operator", "anonymous"])
async def test_methods_not_allowed_are_405_with_allow(admin, path, method, token):
    allow = ROUTES[path]
    if method in allow.split(", "):
        return
    error = await refused(admin, 405, "method_not_allowed", method, path, token=token, json=VALID)
    assert admin.last.headers["Allow"] == allow
    assert allow in error["message"]


# ---- credentials ---------------------------------------------------------------------------

def _credential_cases(keys: Keys) -> list[tuple[str, dict, int, str]]:
    op = OPERATOR_TOKEN
    return [
        ("missing", {}, 401, "missing_token"),
        ("empty bearer", {"Authorization": "Bearer "}, 401, "invalid_token"),
        ("bare scheme", {"Authorization": "Bearer"}, 401, "invalid_token"),
        ("basic", {"Authorization": "Basic " + base64.b64encode(f"operator:{op}".encode()).decode()}, 401,
         "invalid_token"),
        ("token scheme", {"Authorization": f"Token {op}"}, 401, "invalid_token"),
        ("no scheme", {"Authorization": op}, 401, "invalid_token"),
        ("prefix", {"Authorization": f"Bearer {op[:-1]}"}, 401, "invalid_token"),
        ("half", {"Authorization": f"Bearer {op[:len(op) // 2]}"}, 401, "invalid_token"),
        ("16 chars", {"Authorization": f"Bearer {op[:16]}"}, 401, "invalid_token"),
        ("longer", {"Authorization": f"Bearer {op}0"}, 401, "invalid_token"),
        ("upper case", {"Authorization": f"Bearer {op.upper()}"}, 401, "invalid_token"),
        ("non-ascii", {"Authorization": f"Bearer {op[:-1]}é"}, 401, "invalid_token"),
        ("two authorizations", [("Authorization", f"Bearer {op}"), ("Authorization", "Bearer other-token-xxxxxx")],
         400, "ambiguous_credentials"),
        ("same authorization twice", [("Authorization", f"Bearer {op}"), ("Authorization", f"Bearer {op}")],
         400, "ambiguous_credentials"),
        ("mixed", {"Authorization": f"Bearer {op}", "X-API-Key": keys.reader["key"]}, 400, "ambiguous_credentials"),
        ("org key and operator", {"Authorization": f"Bearer {keys.manager['key']}", "X-API-Key": op}, 400,
         "ambiguous_credentials"),
        ("unknown key", {"Authorization": f"Bearer {generate_key()}"}, 401, "invalid_token"),
        ("bad checksum", {"Authorization": f"Bearer {keys.manager['key'][:-1]}"
                                           f"{'A' if keys.manager['key'][-1] != 'A' else 'B'}"}, 401, "invalid_token"),
        ("key of another type", {"Authorization": "Bearer ghp_" + keys.manager["key"][4:]}, 401, "invalid_token"),
        ("in the query only", {}, 401, "missing_token"),
    ]


async def test_bad_credentials_are_refused_and_never_echoed(admin, keys):
    for name, headers, status, code in _credential_cases(keys):
        path = f"{CREATE}?access_token={OPERATOR_TOKEN}" if name == "in the query only" else CREATE
        before = admin.keyspace()
        got, body, resp = await admin.call("POST", path, token=None, headers=headers, json=VALID)
        assert_envelope(got, body, resp, status, code)
        assert admin.keyspace() == before, name
        sent = [v.split(" ", 1)[-1] for _, v in (headers.items() if isinstance(headers, dict) else headers)]
        echoed = str(body) + "".join(f"{k}: {v}\n" for k, v in resp.headers.items())
        for secret in (*sent, OPERATOR_TOKEN, keys.manager["key"], keys.reader["key"]):
            for part in (secret, secret[:12], secret[-12:]):
                if len(part) >= 8:
                    assert part not in echoed, (name, echoed)


async def test_the_scheme_is_case_insensitive_and_the_operator_token_works(admin):
    status, body, _ = await admin.call("GET", "/v1/me", token=None,
                                       headers={"Authorization": f"bearer {OPERATOR_TOKEN}"})
    assert status == 200 and body["operator"] is True


async def test_credentials_come_before_anything_else(admin, keys):
    # An anonymous caller learns nothing about bodies, orgs, key ids or parameters: 401 first.
    for method, path, kw in [
        ("POST", CREATE, {"data": b"{not json", "headers": JSON}),
        ("POST", CREATE, {"data": b"x" * 70_000, "headers": {"Content-Type": "text/plain"}}),
        ("POST", "/v1/orgs/../api-keys", {"json": VALID}),
        ("POST", "/v1/orgs/%C3%A4/api-keys", {"json": {"name": ""}}),
        ("GET", f"/v1/orgs/globex/api-keys/{keys.victim['id']}", {}),
        ("GET", "/v1/orgs/acme/api-keys?limit=abc", {}),
        ("POST", f"/v1/orgs/globex/api-keys/{keys.victim['id']}/revoke", {}),
    ]:
        await refused(admin, 401, "missing_token", method, path, token=None, **kw)
        await refused(admin, 401, "invalid_token", method, path, token=OPERATOR_TOKEN[:-1], **kw)


async def test_revoked_and_expired_org_keys_are_refused(admin, keys, clock):
    status, short, _ = await admin.call("POST", CREATE, json={**VALID, "name": "short",
                                                              "scopes": ["api_keys:manage"], "expires_in": "30d"})
    assert status == 201
    await admin.call("POST", f"/v1/orgs/acme/api-keys/{keys.manager['id']}/revoke")
    await refused(admin, 401, "revoked_api_key", "POST", CREATE, token=keys.manager["key"], json=VALID)
    clock.advance(30 * 86400)
    await refused(admin, 401, "expired_api_key", "GET", "/v1/orgs/acme/api-keys", token=short["key"])
    await refused(admin, 401, "expired_api_key", "POST", CREATE, token=short["key"], json=VALID)


# ---- the real process: what a malformed request leaves in the log -------------------------

MALFORMED = [
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\x01\r\nConnection: close\r\n\r\n",
    b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s" + b"A" * 20_000 + b"\r\nConnection: close\r\n\r\n",
    b"GET /v1/me?%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x00\r\nConnection: close\r\n\r\n",
    b"GET /v1/\xff%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
]


async def test_malformed_requests_are_logged_without_the_credential(admin_process):
    url, log = admin_process.url, admin_process.log
    for template in MALFORMED:
        resp = await raw_request(url, template.replace(b"%s", OPERATOR_TOKEN.encode()))
        assert resp.status == 400
    deadline = time.monotonic() + 5
    while log.read_text().count("malformed HTTP request refused") < len(MALFORMED):
        assert time.monotonic() < deadline, log.read_text()
        await asyncio.sleep(0.02)
    text = log.read_text()
    assert OPERATOR_TOKEN not in text and OPERATOR_TOKEN[:12] not in text, text


async def test_malformed_requests_get_the_envelope_without_the_credential(admin_process):
    url = admin_process.url
    resp = await raw_request(url, MALFORMED[0].replace(b"%s", OPERATOR_TOKEN.encode()))
    assert OPERATOR_TOKEN.encode() not in resp.body
    assert resp.json()["error"]["code"] == "malformed_request"
    assert resp.header("Content-Type").startswith("application/json")
