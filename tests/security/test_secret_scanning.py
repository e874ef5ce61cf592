"""Secret-scanning reports (issue 17): GitHub's partner program shape, signed with keys these
tests generate and publish from a local key server (real HTTP on 127.0.0.1) in GitHub's format.

A report that is unsigned, badly signed, signed over another body, too large or malformed is
refused with nothing changed (the key's record, its log, the org's activity index and the
outbox compared before and after); a real report revokes (or flags) the keys it names through the
normal acknowledged revocation, with an api_key.leaked event carrying the URL and source.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time

import msgspec
import pytest

from admin_api.secret_scanning import STALE_FOR
from gateway.keys import generate_key
from gateway.orgsettings import OrgSettings
from gateway.store.events import decode_entry
from tests.support.secret_scanning import PATH, KeyServer, Signer, report, send


@pytest.fixture
async def key_server(aiohttp_server):
    return await KeyServer().start(aiohttp_server)


@pytest.fixture
def signer(key_server) -> Signer:
    s = Signer("90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a")
    key_server.published.append(s)
    return s


@pytest.fixture
async def scan(make_stack, key_server, signer):
    return await make_stack(admin_settings={"secret_scanning_keys_url": key_server.url,
                                            "secret_scanning_rate": 0})


async def snapshot(stack, key_id: str, org: str = "acme"):
    r, st = stack.store.redis, stack.store
    return (await r.hgetall(st._rec(key_id)), await r.lrange(st._key_log(key_id), 0, -1),
            await r.zrange(st._org_activity(org), 0, -1, withscores=True), await r.xlen(st.events.stream))


async def test_a_reported_key_is_revoked_with_a_leaked_event_naming_where_it_was_found(scan, signer):
    created = await scan.create_key(name="ci key")
    assert (await scan.call("GET", "/v1/tasks", created["key"]))[0] == 200
    status, body, _ = await send(scan, report(created["key"]), signer)
    assert status == 200, body
    assert body == [{"token_hash": hashlib.sha256(created["key"].encode()).hexdigest(),
                     "token_type": "suiteop_api_key", "label": "true_positive"}]
    # Revoked everywhere by the time the report is answered (the acknowledged revocation).
    status, err, _ = await scan.call("GET", "/v1/tasks", created["key"])
    assert (status, err["error"]["code"]) == (401, "revoked_api_key")
    status, key, _ = await scan.admin_call("GET", f"/v1/orgs/acme/api-keys/{created['id']}")
    assert key["status"] == "revoked" and key["revoked_by"] == "secret_scanning:github"
    assert key["leak"] == {"url": "https://github.com/octo/repo/blob/abc/config.py", "source": "content",
                           "scanner": "github", "action": "revoke", "found_at": key["leak"]["found_at"]}
    status, events, _ = await scan.admin_call("GET", f"/v1/orgs/acme/audit-events?key_id={created['id']}")
    leaked, revoked = events["data"][1], events["data"][0]
    assert (leaked["action"], revoked["action"]) == ("api_key.leaked", "api_key.revoked")
    assert leaked["actor"] == revoked["actor"] == "secret_scanning:github"
    assert leaked["changes"]["leak"]["after"]["url"] == "https://github.com/octo/repo/blob/abc/config.py"
    assert leaked["changes"]["leak"]["after"]["source"] == "content"
    # The outbox names both events (the webhook dispatcher delivers api_key.leaked and api_key.revoked).
    entries = [decode_entry(f[b"e"]) for _, f in await scan.store.redis.xrange(scan.store.events.stream)]
    assert [(e.key_id, e.version) for e in entries] == [(created["id"], v) for v in (1, 2, 3)]
    # Reported again: nothing is written again.
    before = await snapshot(scan, created["id"])
    status, body, _ = await send(scan, report(created["key"]), signer)
    assert status == 200 and body[0]["label"] == "true_positive"
    assert await snapshot(scan, created["id"]) == before


async def test_garbage_costs_no_redis_command_and_is_a_false_positive(scan, signer, redis_server):
    created = await scan.create_key()
    real = created["key"]
    wrong_checksum = real[:-1] + ("A" if real[-1] != "A" else "B")
    tokens = ["not a key", "sop_" + "x" * 10, wrong_checksum, "sop_ü" + real[5:], "ghp_" + real[4:], real.lower()]
    before = await snapshot(scan, created["id"])
    calls = redis_server.client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    status, body, _ = await send(scan, report(*tokens), signer)
    assert status == 200, body
    assert [b["label"] for b in body] == ["false_positive"] * len(tokens)
    assert [b["token_hash"] for b in body] == [hashlib.sha256(t.encode()).hexdigest() for t in tokens]
    assert redis_server.client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0) == calls  # no lookup
    assert await snapshot(scan, created["id"]) == before
    # A well-formed key that is not one of ours: looked up, false positive, nothing written.
    status, body, _ = await send(scan, report(generate_key()), signer)
    assert body[0]["label"] == "false_positive"
    assert await snapshot(scan, created["id"]) == before


def _huge() -> bytes:
    return b"[" + b",".join([b'{"token":"x","type":"t","url":"' + b"u" * 1000 + b'","source":"s"}'] * 1100) + b"]"


@pytest.mark.parametrize("case", [
    "unsigned", "no_signature", "no_key_id", "bad_signature", "other_body", "truncated", "not_base64",
    "empty_signature", "two_signatures", "huge", "huge_chunked", "wrong_media_type", "signature_of_nothing",
])
async def test_refused_reports_change_nothing(scan, signer, case):
    created = await scan.create_key()
    body = report(created["key"])
    before = await snapshot(scan, created["id"])
    expected = (401, "invalid_signature")
    if case == "unsigned":
        status, err, _ = await send(scan, body, None)
        expected = (401, "missing_signature")
    elif case == "no_signature":
        status, err, _ = await scan.admin_call("POST", PATH, token=None, data=body, headers={
            "Content-Type": "application/json", "Github-Public-Key-Identifier": signer.key_id})
        expected = (401, "missing_signature")
    elif case == "no_key_id":
        status, err, _ = await scan.admin_call("POST", PATH, token=None, data=body, headers={
            "Content-Type": "application/json", "Github-Public-Key-Signature": signer.sign(body)})
        expected = (401, "missing_signature")
    elif case == "bad_signature":
        status, err, _ = await send(scan, body, signer, signature=base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode())
    elif case == "other_body":  # a genuine signature, replayed over another body
        status, err, _ = await send(scan, body, signer, signature=signer.sign(report(generate_key())))
    elif case == "truncated":
        status, err, _ = await send(scan, body[:-2], signer, signature=signer.sign(body))
    elif case == "not_base64":
        status, err, _ = await send(scan, body, signer, signature="!!!" + signer.sign(body))
    elif case == "empty_signature":
        status, err, _ = await send(scan, body, signer, signature=" ")
    elif case == "two_signatures":
        from multidict import CIMultiDict
        headers = CIMultiDict([("Content-Type", "application/json"), ("Github-Public-Key-Identifier", signer.key_id),
                               ("Github-Public-Key-Signature", signer.sign(body)),
                               ("Github-Public-Key-Signature", signer.sign(body))])
        status, err, _ = await scan.admin_call("POST", PATH, token=None, data=body, headers=headers)
    elif case == "signature_of_nothing":
        status, err, _ = await send(scan, body, signer, signature=signer.sign(b""))
    elif case == "huge":
        huge = _huge()
        status, err, _ = await scan.admin_call("POST", PATH, token=None, data=io.BytesIO(huge), headers={
            "Content-Type": "application/json", "Github-Public-Key-Identifier": signer.key_id,
            "Github-Public-Key-Signature": signer.sign(huge)})
        expected = (413, "payload_too_large")
    elif case == "huge_chunked":  # no Content-Length: the cap counts what arrives
        huge = _huge()

        async def chunks():
            for i in range(0, len(huge), 65536):
                yield huge[i:i + 65536]
        status, err, _ = await scan.admin_call("POST", PATH, token=None, data=chunks(), headers={
            "Content-Type": "application/json", "Github-Public-Key-Identifier": signer.key_id,
            "Github-Public-Key-Signature": signer.sign(huge)})
        expected = (413, "payload_too_large")
    else:
        status, err, _ = await send(scan, body, signer, headers={"Content-Type": "text/plain"})
        expected = (415, "unsupported_media_type")
    assert (status, err["error"]["code"]) == expected, err
    assert set(err["error"]) >= {"code", "message", "request_id"}
    assert created["key"] not in str(err)
    assert await snapshot(scan, created["id"]) == before
    assert (await scan.call("GET", "/v1/tasks", created["key"]))[0] == 200


@pytest.mark.parametrize("body", [
    b'{"token": "x"}', b"[1, 2]", b'[{"type": "t"}]', b'[{"token": 5}]', b"[", b"not json", b"",
    b'[{"token": "' + b"a" * 2000 + b'"}]', b"\xff\xfe", msgspec.json.encode([{"token": "t"}] * 1001),
], ids=["object", "numbers", "no_token", "token_not_string", "truncated_json", "not_json", "empty", "token_too_long",
        "not_utf8", "too_many_tokens"])
async def test_signed_but_malformed_reports_are_refused(scan, signer, body):
    created = await scan.create_key()
    before = await snapshot(scan, created["id"])
    status, err, _ = await send(scan, body, signer)
    assert (status, err["error"]["code"]) == (400, "invalid_report"), err
    assert await snapshot(scan, created["id"]) == before


async def test_an_unknown_key_id_refetches_the_keys_at_most_once_a_minute(scan, key_server, signer):
    created = await scan.create_key()
    body = report(created["key"])
    assert (await send(scan, report("nothing"), signer))[0] == 200  # first use: fetched once
    assert key_server.fetches == 1
    rotated = Signer("new-key-id")
    status, err, _ = await send(scan, body, rotated)  # GitHub rotated, the server has not published it yet
    assert (status, err["error"]["code"]) == (401, "invalid_signature")
    assert key_server.fetches == 2  # the refetch the unknown id caused
    key_server.published.append(rotated)
    for _ in range(5):  # within the bound: no more fetches, however many made-up ids arrive
        status, _, _ = await send(scan, body, rotated)
        assert status == 401
        assert (await send(scan, body, Signer("made-up")))[0] == 401
    assert key_server.fetches == 2
    assert (await scan.call("GET", "/v1/tasks", created["key"]))[0] == 200
    scan.clock.advance(61)
    status, feedback, _ = await send(scan, body, rotated)
    assert status == 200 and feedback[0]["label"] == "true_positive"
    assert key_server.fetches == 3


async def test_key_server_down_is_a_503_with_nothing_changed(scan, key_server, signer):
    created = await scan.create_key()
    before = await snapshot(scan, created["id"])
    key_server.down = True
    status, err, resp = await send(scan, report(created["key"]), signer)
    assert (status, err["error"]["code"]) == (503, "scanner_keys_unavailable")
    assert resp.headers["Retry-After"]
    assert await snapshot(scan, created["id"]) == before
    key_server.down = False
    status, err, resp = await send(scan, report(created["key"]), signer)  # the back-off: no fetch yet
    assert (status, err["error"]["code"], key_server.fetches) == (503, "scanner_keys_unavailable", 1)
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    scan.clock.advance(61)
    assert (await send(scan, report(created["key"]), signer))[0] == 200


async def test_a_stopped_key_server_costs_one_fetch_however_many_reports_arrive(scan, key_server, signer):
    def failed_fetches() -> int:
        return int(scan.admin_state.metrics.scanning_key_fetches.labels("failed")._value.get())
    created = await scan.create_key()
    await key_server.stop()  # connections refused
    started = time.perf_counter()
    answers = await asyncio.gather(*(send(scan, report(created["key"]), signer) for _ in range(100)))
    elapsed = time.perf_counter() - started
    print(f"100 concurrent reports, key server stopped: {elapsed:.2f} s")
    assert {(s, e["error"]["code"]) for s, e, _ in answers} == {(503, "scanner_keys_unavailable")}
    assert all(int(r.headers["Retry-After"]) >= 1 for _, _, r in answers)
    assert 1 <= failed_fetches() <= 2
    assert elapsed < 5
    # During the back-off every report is answered at once, without a fetch.
    for _ in range(20):
        assert (await send(scan, report(created["key"]), signer))[0] == 503
    assert failed_fetches() <= 2
    await key_server.resume()
    scan.clock.advance(61)
    status, body, _ = await send(scan, report(created["key"]), signer)
    assert status == 200 and body[0]["label"] == "true_positive"
    assert key_server.fetches == 1  # the only fetch that reached the server


async def test_stale_keys_serve_for_a_bounded_time_while_their_refetch_fails(scan, key_server, signer):
    assert (await send(scan, report("x"), signer))[0] == 200  # fetched
    key_server.down = True
    scan.clock.advance(3601)  # past max-age: the refetch fails, the keys held still verify
    assert (await send(scan, report("x"), signer))[0] == 200
    assert key_server.fetches == 2
    for _ in range(10):  # and in the back-off, without a fetch
        assert (await send(scan, report("x"), signer))[0] == 200
    assert key_server.fetches == 2
    scan.clock.advance(STALE_FOR)  # past max-age + STALE_FOR: no longer trusted
    status, err, _ = await send(scan, report("x"), signer)
    assert (status, err["error"]["code"]) == (503, "scanner_keys_unavailable")
    key_server.down = False
    scan.clock.advance(61)
    assert (await send(scan, report("x"), signer))[0] == 200


async def test_flag_mode_leaves_the_key_active_and_marked(scan, signer):
    created = await scan.create_key()
    await scan.store.orgs.put("acme", OrgSettings(leak_action="flag"))
    status, body, _ = await send(scan, report(created["key"], url="https://gist.github.com/x/1", source="gist"), signer)
    assert status == 200 and body[0]["label"] == "true_positive"
    assert (await scan.call("GET", "/v1/tasks", created["key"]))[0] == 200
    _, key, _ = await scan.admin_call("GET", f"/v1/orgs/acme/api-keys/{created['id']}")
    assert key["status"] == "active" and key["leak"]["action"] == "flag" and key["leak"]["source"] == "gist"
    _, events, _ = await scan.admin_call("GET", f"/v1/orgs/acme/audit-events?key_id={created['id']}")
    assert [e["action"] for e in events["data"]] == ["api_key.leaked", "api_key.created"]
    before = await snapshot(scan, created["id"])
    assert (await send(scan, report(created["key"]), signer))[0] == 200
    assert await snapshot(scan, created["id"]) == before  # flagged once
    # The org switches to revoke: the next report of the flagged key revokes it (no second mark).
    await scan.store.orgs.put("acme", OrgSettings(leak_action="revoke"))
    assert (await send(scan, report(created["key"]), signer))[0] == 200
    assert (await scan.call("GET", "/v1/tasks", created["key"]))[0] == 401
    _, events, _ = await scan.admin_call("GET", f"/v1/orgs/acme/audit-events?key_id={created['id']}")
    assert [e["action"] for e in events["data"]] == ["api_key.revoked", "api_key.leaked", "api_key.created"]


async def test_an_already_revoked_key_is_a_true_positive_and_nothing_is_written(scan, signer):
    created = await scan.create_key()
    await scan.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/revoke")
    before = await snapshot(scan, created["id"])
    status, body, _ = await send(scan, report(created["key"]), signer)
    assert status == 200 and body[0]["label"] == "true_positive"
    assert await snapshot(scan, created["id"]) == before


async def test_duplicated_tokens_are_labelled_each_time_and_acted_on_once(scan, signer):
    created = await scan.create_key()
    status, body, _ = await send(scan, report(created["key"], "junk", created["key"]), signer)
    assert [b["label"] for b in body] == ["true_positive", "false_positive", "true_positive"]
    _, events, _ = await scan.admin_call("GET", f"/v1/orgs/acme/audit-events?key_id={created['id']}")
    assert [e["action"] for e in events["data"]] == ["api_key.revoked", "api_key.leaked", "api_key.created"]


async def test_unicode_in_fields_is_kept_and_a_rolled_away_secret_is_only_a_true_positive(scan, signer):
    created = await scan.create_key()
    status, rolled, _ = await scan.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/roll",
                                              json={"grace_period": "now"})
    assert status == 200, rolled
    before = await snapshot(scan, created["id"])
    status, body, _ = await send(scan, report(created["key"], url="https://github.com/ö/ü/blob/☃"), signer)
    assert status == 200 and body[0]["label"] == "true_positive"  # ours, but that secret no longer works
    assert await snapshot(scan, created["id"]) == before
    status, body, _ = await send(scan, report(rolled["key"], url="https://github.com/ö/ü/blob/☃"), signer)
    assert body[0]["label"] == "true_positive"
    _, key, _ = await scan.admin_call("GET", f"/v1/orgs/acme/api-keys/{created['id']}")
    assert key["status"] == "revoked" and key["leak"]["url"] == "https://github.com/ö/ü/blob/☃"


async def test_refused_reports_are_rate_limited_per_client_address(make_stack, key_server, signer):
    stack = await make_stack(admin_settings={"secret_scanning_keys_url": key_server.url, "secret_scanning_rate": 3})
    assert (await send(stack, report("x"), None))[0] == 401  # unsigned
    assert (await send(stack, report("x"), signer, signature=signer.sign(b"other")))[0] == 401  # badly signed
    assert (await send(stack, b"not json", signer))[0] == 400  # signed but malformed
    status, err, resp = await send(stack, report("x"), signer)  # the address is over: refused first
    assert (status, err["error"]["code"]) == (429, "too_many_reports") and int(resp.headers["Retry-After"]) >= 1
    assert (await send(stack, report("x"), None))[0] == 429
    stack.clock.advance(61)
    assert (await send(stack, report("x"), signer))[0] == 200


async def test_verified_reports_do_not_count_against_the_address(make_stack, key_server, signer):
    # GitHub sends from few addresses: a burst of real reports must not be answered 429 (GitHub drops them).
    stack = await make_stack(admin_settings={"secret_scanning_keys_url": key_server.url, "secret_scanning_rate": 3})
    created = await stack.create_key()
    for _ in range(20):
        status, body, _ = await send(stack, report("x", created["key"]), signer)
        assert status == 200, body
    assert body[1]["label"] == "true_positive"
    # ...and neither do the 503s of our own key fetch (GitHub sends those again).
    key_server.down = True
    stack.clock.advance(3600 + STALE_FOR)  # the keys held are too old to serve
    for _ in range(5):
        assert (await send(stack, report("x"), signer))[0] == 503
    key_server.down = False
    stack.clock.advance(120)
    assert (await send(stack, report("x"), signer))[0] == 200


async def test_a_report_of_1000_real_keys_is_answered_well_within_30_s(scan, signer):
    now = int(scan.clock() * 1000)
    secrets = []
    for i in range(1000):
        _, secret = await scan.store.create(org_id="acme", name=f"k{i}", scopes=("tasks:read",), expires_at=None,
                                            actor="operator", now_ms=now)
        secrets.append(secret)
    started = time.perf_counter()
    status, body, _ = await send(scan, report(*secrets), signer)
    elapsed = time.perf_counter() - started
    print(f"1000-token report (1000 real keys revoked): {elapsed:.2f} s")
    assert status == 200 and [b["label"] for b in body] == ["true_positive"] * 1000
    assert elapsed < 10
    assert (await scan.call("GET", "/v1/tasks", secrets[-1]))[0] == 401
    page = await scan.store.list("acme", limit=100, include_revoked=True)
    assert all(r.revoked_by == "secret_scanning:github" and r.leak is not None for r in page.records)


async def test_a_refused_signature_is_a_401_with_its_challenge(scan, signer):
    status, err, resp = await send(scan, report("x"), signer, signature=signer.sign(b"other"))
    assert status == 401 and resp.headers["WWW-Authenticate"] == 'Github-Public-Key-Signature realm="api"'


async def _everything_in_redis(r) -> bytes:
    """Every key name and value in Redis, as bytes (type by type: DUMP may compress)."""
    out = []
    async for name in r.scan_iter(count=1000):
        out.append(name)
        kind = (await r.type(name)).decode()
        if kind == "string":
            out.append(await r.get(name) or b"")
        elif kind == "hash":
            out += [b for kv in (await r.hgetall(name)).items() for b in kv]
        elif kind == "list":
            out += await r.lrange(name, 0, -1)
        elif kind == "zset":
            out += [m for m, _ in await r.zrange(name, 0, -1, withscores=True)]
        elif kind == "set":
            out += list(await r.smembers(name))
        elif kind == "stream":
            out += [b for _, fields in await r.xrange(name) for kv in fields.items() for b in kv]
    return b"\n".join(out)


async def test_a_reported_token_is_never_stored_or_logged(scan, signer, caplog):
    # SECURITY (PRODUCT.md: never store or log a key): the report carries live keys in the clear;
    # only their digests and display prefixes may reach Redis or a log line, whatever the token's
    # fate (revoked, flagged, not ours, malformed).
    import logging
    caplog.set_level(logging.DEBUG)
    revoked = await scan.create_key(name="leaked")
    flagged_org_key = generate_key()
    garbage = revoked["key"][:-1] + ("A" if revoked["key"][-1] != "A" else "B")
    status, body, _ = await send(scan, report(revoked["key"], flagged_org_key, garbage), signer)
    assert status == 200 and [b["label"] for b in body] == ["true_positive", "false_positive", "false_positive"]
    stored = await _everything_in_redis(scan.store.redis)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for token in (revoked["key"], flagged_org_key, garbage):
        secret_part = token[len("sop_"):]
        assert secret_part.encode() not in stored, "a reported token reached Redis"
        assert secret_part not in logged, "a reported token reached a log line"


async def test_a_roll_of_a_flagged_key_clears_the_mark_on_its_new_secret(scan, signer):
    created = await scan.create_key()
    await scan.store.orgs.put("acme", OrgSettings(leak_action="flag"))
    assert (await send(scan, report(created["key"]), signer))[0] == 200
    _, key, _ = await scan.admin_call("GET", f"/v1/orgs/acme/api-keys/{created['id']}")
    assert key["leak"]["action"] == "flag"
    status, rolled, _ = await scan.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/roll",
                                              json={"grace_period": "1h"})
    assert status == 200, rolled
    assert rolled["leak"] is None  # the new secret has not leaked
    _, key, _ = await scan.admin_call("GET", f"/v1/orgs/acme/api-keys/{created['id']}")
    assert key["leak"] is None and key["status"] == "active"
    # The old secret's leak stays in the activity log: its api_key.leaked event, and the roll's change.
    _, events, _ = await scan.admin_call("GET", f"/v1/orgs/acme/audit-events?key_id={created['id']}")
    assert [e["action"] for e in events["data"]] == ["api_key.rolled", "api_key.leaked", "api_key.created"]
    assert events["data"][0]["changes"]["leak"] == {"before": {
        "url": "https://github.com/octo/repo/blob/abc/config.py", "source": "content", "scanner": "github",
        "action": "flag"}, "after": None}
    assert (await scan.call("GET", "/v1/tasks", rolled["key"]))[0] == 200
    # Reported again (still in its grace period), the old secret marks the key again.
    assert (await send(scan, report(created["key"]), signer))[0] == 200
    _, key, _ = await scan.admin_call("GET", f"/v1/orgs/acme/api-keys/{created['id']}")
    assert key["leak"]["action"] == "flag"


async def test_a_revoked_leaked_key_takes_the_keys_it_created_with_it(scan, signer):
    # Whoever found the key may have made keys with it: a revoke with cascade, by the scanner.
    leaked = await scan.create_key(scopes=("api_keys:manage", "api_keys:read", "tasks:read"))
    body = {"name": "made by the leaked key", "scopes": ["api_keys:manage", "tasks:read"], "expires_in": "never"}
    status, child, _ = await scan.admin_call("POST", "/v1/orgs/acme/api-keys", token=leaked["key"], json=body)
    assert status == 201, child
    status, grandchild, _ = await scan.admin_call("POST", "/v1/orgs/acme/api-keys", token=child["key"],
                                                  json={**body, "scopes": ["tasks:read"]})
    assert status == 201, grandchild
    bystander = await scan.create_key()
    status, feedback, _ = await send(scan, report(leaked["key"]), signer)
    assert status == 200 and feedback[0]["label"] == "true_positive"
    for made in (leaked, child, grandchild):
        status, err, _ = await scan.call("GET", "/v1/tasks", made["key"])
        assert (status, err["error"]["code"]) == (401, "revoked_api_key")
        _, key, _ = await scan.admin_call("GET", f"/v1/orgs/acme/api-keys/{made['id']}")
        assert key["revoked_by"] == "secret_scanning:github"
    assert (await scan.call("GET", "/v1/tasks", bystander["key"]))[0] == 200
    _, key, _ = await scan.admin_call("GET", f"/v1/orgs/acme/api-keys/{child['id']}")
    assert key["leak"] is None  # only the reported key is marked leaked
