"""The admin API's webhook endpoints (issue 17): ``/v1/orgs/{org_id}/webhooks...`` (create, list,
get, edit, delete, rotate the secret, test-send, recent deliveries) and the delivery tasks every
admin API process runs (gateway.webhook_delivery). Authorized like key management: reading needs
api_keys:read, changing api_keys:manage, in the org."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from aiohttp import web

from admin_api.auth import MANAGE, READ
from gateway import errors, webhooks
from gateway.events import EVENT_TYPES
from gateway.model import rfc3339
from gateway.store.webhooks import WebhookStore
from gateway.urlpolicy import UrlRefused, address_refused, check_url
from gateway.webhook_delivery import DeliveryConfig, WebhookMetrics, dispatcher, queue_test, workers


EventName = Literal[("*",) + EVENT_TYPES]  # "*": every event type
Url = Annotated[str, Meta(min_length=1, max_length=2048, description="http or https URL the events are POSTed to")]
Description = Annotated[str, Meta(max_length=webhooks.MAX_DESCRIPTION)]
Events = Annotated[list[EventName], Meta(max_length=16, description='Event types to send (["*"] or []: all)')]


class CreateWebhookRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A new endpoint."""

    url: Url
    events: Events = msgspec.field(default_factory=lambda: ["*"])
    description: Description = ""


class EditWebhookRequest(msgspec.Struct, forbid_unknown_fields=True):
    """What to change (at least one field)."""

    url: Url | msgspec.UnsetType = msgspec.UNSET
    events: Events | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET


class WebhookEndpoint(msgspec.Struct):
    """An endpoint (never its secret)."""

    id: str
    org_id: str
    url: str
    events: list[str]
    description: str
    created_at: str
    created_by: str
    updated_at: str


class CreatedWebhookEndpoint(WebhookEndpoint):
    """An endpoint with its signing secret (create and rotate-secret only)."""

    secret: str


class RotatedWebhookEndpoint(CreatedWebhookEndpoint):
    """An endpoint with its new signing secret; the previous one still signs (a second signature)
    until ``previous_secret_expires_at`` (null: it stopped at once, --webhooks-rotation-grace 0)."""

    previous_secret_expires_at: str | None


class WebhookEndpointList(msgspec.Struct):
    data: list[WebhookEndpoint]


class WebhookTestQueued(msgspec.Struct):
    """The queued test-send."""

    event_id: str
    type: str


class WebhookDelivery(msgspec.Struct):
    """One event's delivery to the endpoint."""

    event_id: str
    type: str
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    status_code: int | None
    error: str | None
    created_at: str | None
    last_attempt_at: str | None
    next_attempt_at: str | None
    dead_lettered: bool


class WebhookDeliveryList(msgspec.Struct):
    data: list[WebhookDelivery]


SCHEMAS = (CreateWebhookRequest, EditWebhookRequest, WebhookEndpoint, CreatedWebhookEndpoint, RotatedWebhookEndpoint,
           WebhookEndpointList,
           WebhookTestQueued, WebhookDeliveryList)


_create_decoder = msgspec.json.Decoder(CreateWebhookRequest)
_edit_decoder = msgspec.json.Decoder(EditWebhookRequest)


@dataclass
class Webhooks:
    store: WebhookStore
    config: DeliveryConfig
    metrics: WebhookMetrics
    tasks: list[asyncio.Task] = field(default_factory=list)

    def tasks_alive(self) -> bool:
        """/readyz: the dispatcher and the workers still run (they survive errors; one that ended is a bug)."""
        return all(not t.done() for t in self.tasks)


WEBHOOKS = web.AppKey("webhooks", Webhooks)


def add_routes(app: web.Application, state) -> None:
    """The routes, and this process's webhook state over ``state`` (AdminState)."""
    cfg = DeliveryConfig.from_settings(state.settings)
    app[WEBHOOKS] = Webhooks(WebhookStore(state.store, cfg.max_queued), cfg, state.metrics.webhooks)
    r = app.router
    base = "/v1/orgs/{org_id}/webhooks"
    r.add_post(base, create_webhook)
    r.add_get(base, list_webhooks)
    r.add_get(base + "/{webhook_id}", get_webhook)
    r.add_patch(base + "/{webhook_id}", edit_webhook)
    r.add_delete(base + "/{webhook_id}", delete_webhook)
    r.add_post(base + "/{webhook_id}/rotate-secret", rotate_secret)
    r.add_post(base + "/{webhook_id}/test", test_webhook)
    r.add_get(base + "/{webhook_id}/deliveries", list_deliveries)


def start_tasks(app: web.Application) -> list[asyncio.Task]:
    """The dispatcher and the workers of this process (cancelled by the app's _lifecycle)."""
    wh = app[WEBHOOKS]
    consumer = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
    wh.tasks = [asyncio.create_task(dispatcher(wh.store, wh.config, consumer, metrics=wh.metrics)),
                asyncio.create_task(workers(wh.store, wh.config, wh.metrics))]
    return list(wh.tasks)


# -- views ------------------------------------------------------------------------------
def endpoint_out(e: webhooks.Endpoint, cls=WebhookEndpoint, **more):
    return cls(id=e.id, org_id=e.org_id, url=e.url, events=list(e.events) or ["*"], description=e.description,
               created_at=rfc3339(e.created_at) or "", created_by=e.created_by,
               updated_at=rfc3339(e.updated_at or e.created_at) or "", **more)


def created_out(e: webhooks.Endpoint) -> CreatedWebhookEndpoint:
    return endpoint_out(e, CreatedWebhookEndpoint, secret=e.secret)


def delivery_out(row: dict) -> WebhookDelivery:
    def ms(name):
        value = row.get(name) or ""
        return rfc3339(int(value)) if value.isdigit() else None
    status = row.get("status") or ""
    state = row.get("state", "pending")
    state = state if state in ("pending", "delivered", "dead") else "pending"
    return WebhookDelivery(event_id=row.get("event", ""), type=row.get("type", ""), state=state,
                           attempts=int(row.get("attempts") or 0),
                           status_code=int(status) if status.isdigit() else None, error=row.get("error") or None,
                           created_at=ms("created_at"), last_attempt_at=ms("last_at"),
                           next_attempt_at=ms("next_at") if state == "pending" else None,
                           dead_lettered=state == "dead")


# -- handlers ---------------------------------------------------------------------------
async def _caller(request: web.Request, scope: str):
    from admin_api import app as core  # the shared authentication of every admin route

    st = request.app[core.ADMIN]
    principal = await core._principal(request)
    org_id = core._org_id(request)
    principal.require(scope, org_id)
    await core._require_org(st, principal, org_id)
    return core, st, principal, org_id


async def _endpoint(request: web.Request, org_id: str) -> webhooks.Endpoint:
    endpoint_id = request.match_info["webhook_id"]
    if not webhooks.ENDPOINT_ID.match(endpoint_id):
        raise errors.WebhookNotFound()
    found = await request.app[WEBHOOKS].store.endpoint(org_id, endpoint_id)
    if found is None:
        raise errors.WebhookNotFound()
    return found


async def checked_url(url: str, allow_private: bool) -> str:
    """The URL if the policy allows it and every address its host resolves to now; else 400."""
    try:
        target = check_url(url, allow_private)
    except UrlRefused as exc:
        raise errors.WebhookUrlRefused(str(exc)) from None
    if target.literal:
        return url
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise errors.WebhookUrlRefused(f"The host {target.host} does not resolve.") from None
    for *_, address in infos:
        reason = address_refused(address[0], allow_private)
        if reason:
            raise errors.WebhookUrlRefused(f"{target.host} resolves to a refused address: {reason}")
    return url


def _fields(events, description) -> tuple[tuple[str, ...], str]:
    try:
        return webhooks.check_events(events), webhooks.check_description(description)
    except ValueError as exc:
        raise errors.FieldError("events" if "event" in str(exc) else "description", str(exc)) from None


async def create_webhook(request: web.Request) -> web.Response:
    """POST .../webhooks: a new endpoint; its signing secret is in this response only."""
    core, st, principal, org_id = await _caller(request, MANAGE)
    body = await core._read_json(request, _create_decoder)
    wh = request.app[WEBHOOKS]
    events, description = _fields(body.events, body.description)
    url = await checked_url(body.url, wh.config.allow_private)
    if len(await wh.store.endpoints(org_id)) >= webhooks.MAX_ENDPOINTS_PER_ORG:
        raise errors.WebhookLimitReached(webhooks.MAX_ENDPOINTS_PER_ORG)
    now = st.now_ms()
    endpoint = webhooks.Endpoint("wh_" + os.urandom(10).hex()[:16], org_id, url,
                                 webhooks.secret_from(os.urandom(webhooks.SECRET_BYTES)), events, description,
                                 now, principal.actor, now)
    await wh.store.put_endpoint(endpoint)
    return _json(created_out(endpoint), 201)


async def list_webhooks(request: web.Request) -> web.Response:
    """GET .../webhooks: the org's endpoints (never their secrets)."""
    _, _, _, org_id = await _caller(request, READ)
    return _json(WebhookEndpointList([endpoint_out(e) for e in await request.app[WEBHOOKS].store.endpoints(org_id)]))


async def get_webhook(request: web.Request) -> web.Response:
    _, _, _, org_id = await _caller(request, READ)
    return _json(endpoint_out(await _endpoint(request, org_id)))


async def edit_webhook(request: web.Request) -> web.Response:
    """PATCH .../webhooks/{id}: url, events, description."""
    core, st, _, org_id = await _caller(request, MANAGE)
    body = await core._read_json(request, _edit_decoder)
    endpoint = await _endpoint(request, org_id)
    changes: dict = {}
    if body.events is not msgspec.UNSET:
        changes["events"] = _fields(body.events, None)[0]
    if body.description is not msgspec.UNSET:
        changes["description"] = _fields(None, body.description)[1]
    if body.url is not msgspec.UNSET:
        changes["url"] = await checked_url(body.url, request.app[WEBHOOKS].config.allow_private)
    if not changes:
        raise errors.FieldError("body", "Give at least one of url, events, description.")
    endpoint = msgspec.structs.replace(endpoint, updated_at=st.now_ms(), **changes)
    await request.app[WEBHOOKS].store.put_endpoint(endpoint)
    return _json(endpoint_out(endpoint))


async def delete_webhook(request: web.Request) -> web.Response:
    """DELETE .../webhooks/{id}: nothing more is delivered to it (queued deliveries are dropped)."""
    _, _, _, org_id = await _caller(request, MANAGE)
    endpoint = await _endpoint(request, org_id)
    if not await request.app[WEBHOOKS].store.delete_endpoint(org_id, endpoint.id):
        raise errors.WebhookNotFound()
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    """POST .../webhooks/{id}/rotate-secret: a new signing secret, in this response only; the old
    one keeps signing beside it (two signatures) for --webhooks-rotation-grace, then is deleted."""
    _, st, _, org_id = await _caller(request, MANAGE)
    wh = request.app[WEBHOOKS]
    # The grace runs on the wall clock, as deliveries do.
    now = int(time.time() * 1000)
    endpoint = (await _endpoint(request, org_id)).rotated(webhooks.secret_from(os.urandom(webhooks.SECRET_BYTES)),
                                                         now, int(wh.config.rotation_grace * 1000))
    await wh.store.put_endpoint(endpoint)
    until = rfc3339(endpoint.previous_until) if endpoint.previous_secret else None
    return _json(endpoint_out(endpoint, RotatedWebhookEndpoint, secret=endpoint.secret,
                              previous_secret_expires_at=until))


async def test_webhook(request: web.Request) -> web.Response:
    """POST .../webhooks/{id}/test: queue a webhook.test delivery to this endpoint only
    (--webhooks-test-sends a minute per endpoint)."""
    _, st, _, org_id = await _caller(request, MANAGE)
    endpoint = await _endpoint(request, org_id)
    wh = request.app[WEBHOOKS]
    wait = await wh.store.test_send_allowed(endpoint.id, wh.config.test_sends, 60)
    if wait:
        raise errors.TooManyTestSends(wh.config.test_sends, wait)
    # Deliveries run on the wall clock (their timestamps are checked by receivers), the test too.
    event_id = await queue_test(wh.store, endpoint, int(time.time() * 1000), wh.metrics)
    return _json(WebhookTestQueued(event_id, webhooks.TEST_TYPE), 202)


async def list_deliveries(request: web.Request) -> web.Response:
    """GET .../webhooks/{id}/deliveries: the endpoint's recent deliveries, newest first."""
    _, _, _, org_id = await _caller(request, READ)
    endpoint = await _endpoint(request, org_id)
    rows = await request.app[WEBHOOKS].store.deliveries(endpoint.id)
    return _json(WebhookDeliveryList([delivery_out(r) for r in rows]))


_encoder = msgspec.json.Encoder()


def _json(body: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})
