"""A full stack per test: echo upstream, gateway and admin API on real sockets, real Redis (fixtures)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import pytest
from multidict import CIMultiDict

from admin_api.app import ADMIN, AdminState, make_admin_app
from gateway.app import Gateway, make_ops_app
from gateway.config import AdminSettings, ServeSettings
from gateway.echo import RECEIVED, make_echo_app
from gateway.decision import GatewayState
from gateway.store import KeyStore, connect
from tests.support import OPERATOR_TOKEN, SCOPES, Clock, wait_for


@dataclass
class Stack:
    gateway: str
    admin: str
    ops: str
    http: aiohttp.ClientSession
    store: KeyStore
    state: GatewayState
    received: list
    clock: Clock
    admin_state: AdminState
    extra: dict[str, Any] = field(default_factory=dict)

    async def create_key(self, org: str = "acme", scopes=("tasks:read",), expires_in: str = "never",
                         name: str = "test key") -> dict:
        """Create a key through the admin API as the operator."""
        async with self.http.post(
            f"{self.admin}/v1/orgs/{org}/api-keys",
            json={"name": name, "scopes": list(scopes), "expires_in": expires_in},
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        ) as resp:
            body = await resp.json()
            assert resp.status == 201, body
            return body

    async def call(self, method: str, path: str, key: str | None = None, **kw) -> tuple[int, Any, aiohttp.ClientResponse]:
        """A request through the gateway, with ``key`` as the Bearer credential."""
        return await self._request(self.gateway, method, path, key, **kw)

    async def admin_call(self, method: str, path: str, token: str = OPERATOR_TOKEN, **kw):
        """A request to the admin API, with ``token`` as the Bearer credential (None: none)."""
        return await self._request(self.admin, method, path, token, **kw)

    async def _request(self, base: str, method: str, path: str, bearer: str | None, **kw):
        return await request_json(self.http, method, base + path, bearer, **kw)


async def request_json(http: aiohttp.ClientSession, method: str, url, bearer: str | None = None,
                       **kw) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One request, with ``bearer`` as Authorization if given: (status, JSON body or the raw
    bytes when it is not JSON, the closed response)."""
    headers = CIMultiDict(kw.pop("headers", {}) or {})
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    async with http.request(method, url, headers=headers, **kw) as resp:
        raw = await resp.read()
        try:
            body = msgspec.json.decode(raw) if raw else None
        except msgspec.DecodeError:
            body = raw
        return resp.status, body, resp


@pytest.fixture
async def echo_server(aiohttp_server):
    return await aiohttp_server(make_echo_app(keep=True))


@pytest.fixture
async def make_stack(aiohttp_server, redis_url, clock, echo_server):
    """Factory: build a stack with optional ServeSettings overrides (AdminSettings ones in ``admin_settings``)."""
    made = []
    gateways: list[Gateway] = []

    async def factory(scopes: str = str(SCOPES), admin_settings: dict | None = None, **overrides) -> Stack:
        settings = {
            "upstream": str(echo_server.make_url("")).rstrip("/"), "redis": redis_url, "scopes": scopes,
            "flush_interval": 3600.0, "reload_interval": 0.0, **overrides,
        }
        serve = ServeSettings(**settings)
        gw = Gateway(serve, clock=clock)
        gateways.append(gw)  # stopped at teardown even if the rest of the set-up fails
        await gw.start("127.0.0.1", 0)
        state = gw.state
        ops = await aiohttp_server(make_ops_app(state))
        admin = await aiohttp_server(make_admin_app(
            AdminSettings(redis=serve.redis, redis_min_replicas=serve.redis_min_replicas, scopes=scopes, operator_tokens=(OPERATOR_TOKEN,), flush_interval=3600.0,
                          **(admin_settings or {})),
            clock=clock,
        ))
        # Tests read the history right after flushing: every flush writes it (not every HISTORY_EVERY s).
        state.usage.history_every = admin.app[ADMIN].usage.history_every = 0.0
        http = aiohttp.ClientSession()
        store = KeyStore(connect(serve.redis, timeout=2.0))
        made.append((http, store))
        await wait_for(lambda: state.cache.trusted or serve.cache_ttl == 0)
        return Stack(
            gateway=f"http://127.0.0.1:{gw.port}", admin=str(admin.make_url("")).rstrip("/"),
            ops=str(ops.make_url("")).rstrip("/"), http=http, store=store, state=state,
            received=echo_server.app[RECEIVED], clock=clock, admin_state=admin.app[ADMIN],
        )

    yield factory
    for http, store in made:
        await http.close()
        await store.redis.aclose()
    for gw in gateways:
        await gw.stop()


@pytest.fixture
async def stack(make_stack) -> Stack:
    return await make_stack()
