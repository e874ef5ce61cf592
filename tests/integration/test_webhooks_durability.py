"""Webhooks survive a SIGKILL (issue 17): real `gateway admin` processes; the one delivering is
killed mid-delivery and another delivers the same event (same webhook-id, same body) once the
claim expires; events written while no admin API runs are delivered when one starts."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp

from gateway import webhooks
from gateway.store import KeyStore, connect
from tests.security.conftest import start_admin, stop_process
from tests.support import OPERATOR_TOKEN, eventually
from tests.support.webhooks import GOT, receiver_app

FLAGS = ("--webhooks-allow-private", "true", "--webhooks-poll", "0.05", "--webhooks-timeout", "1", "--webhooks-visibility", "1",
         "--webhooks-retry-base", "0.1")


async def test_a_delivery_cut_by_sigkill_is_made_by_another_process(redis_url, aiohttp_server, tmp_path):
    hold = asyncio.Event()
    receiver = await aiohttp_server(receiver_app(hold=hold))
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    first = start_admin(tmp_path / "a.log", redis_url, *FLAGS)
    second = None
    store = KeyStore(connect(redis_url))
    try:
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.post(f"{first.url}/v1/orgs/acme/api-keys",
                                 json={"name": "setup", "scopes": ["tasks:read"], "expires_in": "never"}) as r:
                assert r.status == 201
            async with http.post(f"{first.url}/v1/orgs/acme/webhooks",
                                 json={"url": str(receiver.make_url("/in")), "events": ["api_key.revoked"]}) as r:
                hook = await r.json()
                assert r.status == 201, hook
            async with http.post(f"{first.url}/v1/orgs/acme/api-keys",
                                 json={"name": "doomed", "scopes": ["tasks:read"], "expires_in": "never"}) as r:
                key = await r.json()
            async with http.post(f"{first.url}/v1/orgs/acme/api-keys/{key['id']}/revoke") as r:
                assert r.status == 200
            await eventually(lambda: _now(len(receiver.app[GOT]) == 1), timeout=10)
            first.proc.send_signal(signal.SIGKILL)  # mid-delivery: the receiver has not answered
            first.proc.wait(5)
            hold.set()
            # Written while no admin API runs: the outbox keeps it.
            now = int(time.time() * 1000)
            later, _ = await store.create(org_id="acme", name="offline", scopes=("tasks:read",), expires_at=None,
                                          actor="usr_cli", now_ms=now)
            await store.revoke(org_id="acme", key_id=later.id, actor="usr_cli", now_ms=now + 1)
            second = start_admin(tmp_path / "b.log", redis_url, *FLAGS)
            first_id, later_id = f"evt_{key['id']}_2", f"evt_{later.id}_2"

            def ids() -> list[str]:
                return [g["headers"]["webhook-id"] for g in receiver.app[GOT]]
            await eventually(lambda: _now(ids().count(first_id) >= 2 and later_id in ids()), timeout=15)
            got = receiver.app[GOT]
            again = [g for g in got if g["headers"]["webhook-id"] == first_id]
            assert len(again) >= 2 and len({g["body"] for g in again}) == 1
            for g in got:
                h = g["headers"]
                assert h["webhook-signature"] == webhooks.signature(hook["secret"], h["webhook-id"],
                                                                    int(h["webhook-timestamp"]), g["body"])
            assert {json.loads(g["body"])["data"]["key_id"] for g in got} == {key["id"], later.id}

            async def delivered():
                async with http.get(f"{second.url}/v1/orgs/acme/webhooks/{hook['id']}/deliveries") as r:
                    rows = (await r.json())["data"]
                return rows if len(rows) == 2 and all(d["state"] == "delivered" for d in rows) else None
            rows = await eventually(delivered, timeout=10)
            assert {d["event_id"]: d["attempts"] for d in rows} == {first_id: 2, later_id: 1}
    finally:
        await store.redis.aclose()
        stop_process(first.proc)
        if second is not None:
            stop_process(second.proc)


async def _now(value):
    return value
