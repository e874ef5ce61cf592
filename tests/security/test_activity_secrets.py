"""The activity log never holds a secret or a digest (issue 14): create, revoke and roll-like events
written, then the whole log read back through the admin API and straight from Redis."""

from __future__ import annotations

import base64

from gateway import keys
from tests.integration.test_activity_log import page_all


async def test_no_secret_or_digest_appears_in_the_activity_log(stack):
    made = [await stack.create_key(name=f"k{i}") for i in range(3)]
    for k in made[:2]:
        await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{k['id']}/revoke")
    events, _ = await page_all(stack, limit=2)
    assert len(events) == 5
    api_text = str(events)
    raw_text = b"".join([b for k in made for b in await stack.store.redis.lrange(stack.store._key_log(k["id"]), 0, -1)])
    raw_text += b"".join(await stack.store.redis.zrange(stack.store._org_activity("acme"), 0, -1))
    for k in made:
        digest = keys.parse_key(k["key"]).digest
        raw = bytes.fromhex(digest)
        secret_part = k["key"][len("sop_"):]
        for needle in (k["key"], secret_part, secret_part[6:], digest, digest.upper(),
                       base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
            assert needle not in api_text and needle.encode() not in raw_text, needle
        assert raw not in raw_text
