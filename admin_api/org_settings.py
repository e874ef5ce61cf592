"""``GET/PATCH /v1/orgs/{org_id}/settings``: an org's own settings about its keys (issue 17;
gateway.orgsettings): what a leak report does, when a key counts as unused, whether unused keys
expire. Read with api_keys:read, changed with api_keys:manage (as the keys themselves)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from admin_api import schemas
from admin_api.auth import MANAGE, READ
from gateway import errors
from gateway.orgsettings import FLAG, OrgSettings

_PATCH = msgspec.json.Decoder(dict[str, Any])


def _out(org_id: str, settings: OrgSettings) -> web.Response:
    body = schemas.OrgSettingsOut(org_id, settings.leak_action, settings.unused_days, settings.expire_unused_days)
    return web.Response(body=msgspec.json.encode(body), content_type="application/json")


async def get_settings(request: web.Request) -> web.Response:
    """GET: the org's settings (the defaults until it changes one)."""
    from admin_api import app  # the admin API's request helpers (app imports this module)

    st = request.app[app.ADMIN]
    principal = await app._principal(request)
    org_id = app._org_id(request)
    principal.require(READ, org_id)
    await app._require_org(st, principal, org_id)
    return _out(org_id, await st.store.orgs.get(org_id))


async def patch_settings(request: web.Request) -> web.Response:
    """PATCH: change some settings (a JSON object of the fields to change; null clears
    expire_unused_days); validated by OrgSettings (400 validation_failed naming the field)."""
    from admin_api import app

    st = request.app[app.ADMIN]
    principal = await app._principal(request)
    org_id = app._org_id(request)
    principal.require(MANAGE, org_id)
    given = await app._read_json(request, _PATCH)
    await app._require_org(st, principal, org_id)
    current = await st.store.orgs.get(org_id)
    # (JSON has one number type: 30.0 is the integer 30, as for limits)
    given = {k: app._integral(v) if isinstance(v, float) else v for k, v in given.items()}
    try:
        settings = msgspec.convert({**msgspec.structs.asdict(current), **given}, OrgSettings)
    except msgspec.ValidationError as exc:
        raise app._field_error(str(exc)) from None
    # SECURITY: a leaked key holding api_keys:manage must not be able to make its own later leaks
    # (or its siblings') only flagged: weakening leak handling takes a person or an operator.
    if principal.key_id is not None and settings.leak_action == FLAG and given.get("leak_action") == FLAG \
            and current.leak_action != FLAG:
        raise errors.LeakHandlingNeedsPerson()
    # Only the fields given are written (atomically, with the audit event): a concurrent PATCH of
    # another field stays.
    changed = {name: getattr(settings, name) for name in given}
    if changed:
        _, settings, _ = await st.store.orgs.change(org_id, changed, principal.actor, st.now_ms())
    return _out(org_id, settings)
