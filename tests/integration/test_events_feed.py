"""The org event outbox (issue 17): every change of a key appends one entry naming its activity
log event, in the round trip that writes the org's activity index; a real redis-server."""

from __future__ import annotations

import time

from gateway.store import KeyStore, connect
from gateway.store.events import decode_entry


async def test_each_change_of_a_key_appends_one_entry_that_names_its_logged_event(redis_server, redis_url):
    store = KeyStore(connect(redis_url))
    try:
        now = int(time.time() * 1000)
        record, _ = await store.create(org_id="org_feed", name="a", scopes=("tasks:read",), expires_at=None,
                                       actor="usr_1", now_ms=now)
        await store.lifecycle.edit(org_id="org_feed", key_id=record.id, actor="usr_1", now_ms=now + 1,
                                   ack_timeout=0.0, name="b")
        await store.lifecycle.roll(org_id="org_feed", key_id=record.id, grace="now", actor="usr_1",
                                   now_ms=now + 2, ack_timeout=0.0)
        await store.revoke(org_id="org_feed", key_id=record.id, actor="usr_2", now_ms=now + 3)
        await store.revoke(org_id="org_feed", key_id=record.id, actor="usr_2", now_ms=now + 4)  # idempotent: no entry
        entries = [decode_entry(fields[b"e"]) for _, fields in redis_server.client.xrange(store.events.stream)]
        assert [(e.org_id, e.key_id, e.version) for e in entries] == [("org_feed", record.id, v) for v in (1, 2, 3, 4)]
        assert len({e.id for e in entries}) == 4
        page = await store.activity("org_feed", key_id=record.id)
        logged = {(ev.key_id, ev.version): ev.action for ev in page.events}  # each entry names a logged event
        assert [logged[(e.key_id, e.version)] for e in entries] == ["api_key.created", "api_key.updated",
                                                                    "api_key.rolled", "api_key.revoked"]
        assert [e.at for e in entries] == [now, now + 1, now + 2, now + 3]
    finally:
        await store.redis.aclose()
