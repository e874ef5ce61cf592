"""The admin API: create, list, get and revoke an org's API keys; the permission catalogue."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

import msgspec
from aiohttp import web

from admin_api import finder, schemas
from admin_api.auth import MANAGE, READ, Principal, authenticate
from admin_api.guard import AuthGuard
from admin_api.oidc import OidcVerifier
from admin_api.openapi import STATIC_FILES, build_openapi
from admin_api.ops import ORG, PRINCIPAL, AdminMetrics, log_request
from admin_api.signin import SIGNIN, SignIn, add_routes as add_signin_routes
from admin_api.secret_scanning import SCANNING, Scanning, github_report
from admin_api.org_settings import get_settings, patch_settings
from admin_api import webhooks as webhook_routes
from gateway import errors
from gateway.errors import FieldError, OrgNotFound
from gateway import store as store_mod
from gateway import history, validation
from gateway.config import AdminSettings
from gateway.model import EXPIRY_CHOICES, GRACE_CHOICES, KeyRecord, created_by_any, rfc3339
from gateway.plans import LimitsConfig, describe, settings_limits
from gateway.ratelimit import MAX_LIMIT, WINDOWS, window_bounds
from gateway.envelope import new_request_id
from gateway.aiohttp_runner import error_response, server_logger
from gateway.reload import RulesHolder
from gateway.scopes import RuleSet
from gateway.store import CreateLimits, KeyStore, decode_audit_cursor, decode_cursor
from gateway.tasks import ACK_TIMEOUT, flush_at_shutdown, usage_flusher
from gateway.usage import UsageBuffer, outcome_class

MAX_BODY = 64 * 1024
_json = msgspec.json.Encoder()
_create_decoder = msgspec.json.Decoder(schemas.CreateKeyRequest)
_revoke_decoder = msgspec.json.Decoder(schemas.RevokeKeyRequest)
_roll_decoder = msgspec.json.Decoder(schemas.RollKeyRequest)
_edit_decoder = msgspec.json.Decoder(schemas.EditKeyRequest)
CASCADE_BATCH = 16  # revocations of one cascade level broadcast at once

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


# The page may load its own script and style sheet and call this API; nothing else, no inline code.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC_DIR = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


@dataclass
class AdminState:
    settings: AdminSettings
    store: KeyStore
    rules: RulesHolder
    clock: Callable[[], float]
    guard: AuthGuard
    metrics: AdminMetrics
    creates: CreateLimits
    limits: LimitsConfig  # the default plan and ceilings (--limits-file, --default-limits)
    usage: UsageBuffer = field(default_factory=UsageBuffer)  # org keys' uses, flushed like a gateway's
    oidc: OidcVerifier | None = None  # with --oidc-issuer: the provider's access tokens
    signin: SignIn | None = None  # with --oidc-client-id: page sign-in
    webhook_tasks_alive: Callable[[], bool] | None = None  # admin_api.webhooks: the delivery tasks run

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def ready_checks(self) -> dict[str, bool]:
        """/readyz beyond Redis and the rules: the provider's metadata and JWKS are loaded (and
        the last fetch did not fail within --oidc-backoff)."""
        checks = {"webhook_tasks": self.webhook_tasks_alive()} if self.webhook_tasks_alive else {}
        if self.oidc is None:
            return checks
        return {**checks, "oidc_provider": self.oidc.loaded and not self.oidc.backoff(self.clock())}

    async def update_metrics(self) -> None:
        """Before /metrics renders: the live-sessions gauge (left as it was while Redis fails)."""
        if self.signin is not None:
            try:
                self.metrics.live_sessions.set(await self.signin.live_sessions())
            except store_mod.FAULTS:
                pass


ADMIN = web.AppKey("admin_state", AdminState)


def make_admin_app(
    settings: AdminSettings, *, clock: Callable[[], float] = time.time, rules: RuleSet | None = None
) -> web.Application:
    """The admin API application (routes below; documented in /openapi.json)."""
    app = web.Application(middlewares=[envelope_middleware], client_max_size=MAX_BODY,
                          handler_args={"logger": server_log})
    client = store_mod.connect(settings.redis, timeout=settings.redis_timeout)
    guard = AuthGuard(settings, clock)
    st = app[ADMIN] = AdminState(settings, KeyStore(client, settings.redis_prefix,
                                                            store_mod.parse_min_replicas(settings.redis_min_replicas)), RulesHolder(settings.scopes, rules),
                                 clock, guard, AdminMetrics(guard), CreateLimits(client, settings),
                                 settings_limits(settings))
    if settings.oidc_issuer:
        st.oidc = OidcVerifier(settings, clock)
    if settings.signin_enabled and st.oidc is not None:
        st.signin = app[SIGNIN] = SignIn(settings, st.oidc, st.store.sessions,
                                         guard, clock, st.metrics)
    st.rules.on_reload = lambda result: st.metrics.reloads.labels(result).inc()
    st.store.ledger.retain(settings.usage_hourly_days, settings.usage_daily_days)
    if settings.secret_scanning_keys_url:
        app[SCANNING] = Scanning(st, clock)
    r = app.router
    r.add_get("/v1/me", whoami)
    r.add_get("/v1/permissions", list_permissions)
    r.add_post("/v1/orgs/{org_id}/api-keys", create_key)
    r.add_get("/v1/orgs/{org_id}/api-keys", list_keys)
    r.add_get("/v1/orgs/{org_id}/api-keys/{key_id}", get_key)
    r.add_get("/v1/orgs/{org_id}/api-keys/{key_id}/usage", get_key_usage)
    r.add_post("/v1/orgs/{org_id}/api-keys/{key_id}/revoke", revoke_key)
    r.add_post("/v1/orgs/{org_id}/api-keys/{key_id}/roll", roll_key)
    r.add_patch("/v1/orgs/{org_id}/api-keys/{key_id}", edit_key)
    r.add_get("/v1/orgs/{org_id}/audit-events", list_audit_events)
    r.add_get("/v1/orgs/{org_id}/settings", get_settings)
    r.add_patch("/v1/orgs/{org_id}/settings", patch_settings)
    r.add_post("/v1/secret-scanning/github", github_report)  # public: the report's signature authenticates it
    add_signin_routes(app)
    webhook_routes.add_routes(app, st)
    st.webhook_tasks_alive = app[webhook_routes.WEBHOOKS].tasks_alive
    r.add_get("/openapi.json", openapi)
    r.add_get("/", page)
    r.add_get("/static/{file}", static_file)
    r.add_get("/favicon.ico", favicon)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    st = app[ADMIN]
    watcher = asyncio.create_task(st.rules.watch(st.settings.reload_interval))
    flusher = asyncio.create_task(usage_flusher(st.store, st.usage, st.metrics, st.settings.flush_interval))
    backfill = asyncio.create_task(backfill_activity(st.store))
    tasks = [watcher, flusher, backfill, asyncio.create_task(check_limits_config(st.store.limits, st.limits))]
    if st.oidc is not None:
        tasks.append(asyncio.create_task(load_provider(st.oidc)))
    tasks += webhook_routes.start_tasks(app)  # the webhook dispatcher and delivery workers
    tasks.append(asyncio.create_task(finder.run(st, ACK_TIMEOUT)))  # expiring, expired, unused keys (issue 17)
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await flush_at_shutdown(st.store, st.usage, st.metrics)
    await st.store.redis.aclose()
    if st.oidc is not None:
        await st.oidc.close()
    if SCANNING in app:
        await app[SCANNING].keys.close()


async def load_provider(oidc: OidcVerifier) -> None:
    """At start-up: the provider's metadata and JWKS, retried until they load (/readyz waits)."""
    while not oidc.loaded:
        try:
            await oidc.load()
        except errors.IdpUnavailable:
            server_log.warning("OpenID provider: metadata or JWKS not loaded; retrying in %.0f s",
                               max(1.0, oidc.settings.oidc_backoff))
            await asyncio.sleep(max(1.0, oidc.settings.oidc_backoff))
    server_log.info("OpenID provider: metadata and JWKS loaded")


LIMITS_CHECK_EVERY = 60.0  # seconds between comparisons of this process's limits configuration with the gateways'


async def check_limits_config(budgets, config: LimitsConfig, every: float = LIMITS_CHECK_EVERY) -> None:
    """Warn while the gateways enforce another default plan or other ceilings than this process
    was given (``gateway admin`` started without the gateways' --limits-file: its reads would
    show other effective limits, its ceilings would go unchecked). Once per change seen."""
    warned = None
    while True:
        try:
            theirs = await budgets.announced()
        except store_mod.FAULTS:
            theirs = None
        if theirs is not None and theirs != describe(config) and theirs != warned:
            server_log.warning("the gateways enforce limits %r, this admin API was given %r: start it with the "
                               "gateways' --limits-file / --default-limits (docs/rate-limits.md)",
                               theirs or "(none)", describe(config) or "(none)")
            warned = theirs
        await asyncio.sleep(every)


BACKFILL_RETRY = 5.0  # seconds between attempts of the start-up backfill while Redis fails


async def backfill_activity(store: KeyStore) -> None:
    """At start-up, once per Redis (a marker there says it was done): the create and revoke
    events of records written before the activity log (KeyStore.backfill_activity); retried
    until Redis answers. Reads meanwhile show those keys' events once they are written."""
    while True:
        try:
            done = await store.backfill_activity()
        except store_mod.FAULTS as exc:
            server_log.warning("activity log backfill failed (%s); retrying in %.0f s", type(exc).__name__,
                               BACKFILL_RETRY)
            await asyncio.sleep(BACKFILL_RETRY)
            continue
        if done:
            server_log.info("activity log: backfilled the events of %d keys written before it", done)
        return


server_log = server_logger("admin_api.server")  # without the bytes of requests that failed to parse


@web.middleware
async def envelope_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every error becomes the JSON envelope; every response gets the security headers and an
    access-log line."""
    started = time.perf_counter()
    request_id = new_request_id()
    err: errors.ApiError | None = None
    try:
        response = await handler(request)
    except errors.ApiError as exc:
        err = exc
    except web.HTTPMethodNotAllowed as exc:
        err = errors.MethodNotAllowed(tuple(sorted(exc.allowed_methods)))
    except web.HTTPRequestEntityTooLarge:
        err = errors.PayloadTooLarge(f"The body must be at most {MAX_BODY} bytes.")
    except web.HTTPNotFound:
        err = errors.NotFound("No such endpoint.")
    except store_mod.NotReplicated:
        request.app[ADMIN].metrics.redis_errors.inc()
        err = errors.StoreUnconfirmed()
    except store_mod.FAULTS:
        # SECURITY: a store fault is a 503, never a 401 or a half-done write reported as done.
        request.app[ADMIN].metrics.redis_errors.inc()
        err = errors.StoreUnavailable()
    except Exception:
        # A bug still answers in the envelope (aiohttp's own 500 page is plain text); logged
        # with the request id and method only, never the body or headers.
        server_log.exception("unhandled error (request %s, %s)", request_id, request.method)
        err = errors.ApiError()
    if err is not None:
        response = error_response(err, request_id)
    _count_use(request, response.status, err is not None)
    log_request(request.app[ADMIN].metrics, request, request_id, response.status, err.code if err else "ok", started)
    response.headers.setdefault("X-Request-Id", request_id)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    if isinstance(err, errors.RequestTimeout):
        # The rest of the body was never read: answer, then close at once (aiohttp would
        # otherwise linger, reading what the slow client still sends).
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
    return response


def _count_use(request: web.Request, status: int, refused: bool) -> None:
    """An org key's request counts like one through the gateway: last used, request count, and
    the class of its answer (refused: this API's own 403, 404, 405 or 429 after authenticating)."""
    principal = request.get(PRINCIPAL)
    if principal is not None and principal.key_id is not None:
        st = request.app[ADMIN]
        st.usage.add(principal.key_id, st.now_ms(), outcome_class(status, refused))


CREDENTIAL_HEADERS = ("Authorization", "X-API-Key")


async def _principal(request: web.Request) -> Principal:
    st = request.app[ADMIN]
    if st.signin is not None and st.signin.has_cookie(request) and not any(
            h in request.headers for h in CREDENTIAL_HEADERS):
        # The page's session (no credential header: one wins over the cookie, as before).
        principal = await st.signin.request_principal(request)
        request[PRINCIPAL] = principal
        return principal
    headers, peer = list(request.headers.items()), request.remote or ""
    st.guard.check(peer, headers)  # SECURITY: before any Redis command
    try:
        principal = await authenticate(headers, st.store, st.settings.operator_tokens, st.now_ms(), st.oidc)
    except errors.MissingToken:
        raise  # sending nothing is not a failed attempt
    except errors.Unauthorized:
        st.guard.failed(peer, headers)
        raise
    st.guard.accepted(headers)
    request[PRINCIPAL] = principal  # for the access log
    return principal


def _org_id(request: web.Request) -> str:
    org_id = request.match_info["org_id"]
    if not validation.is_org_id(org_id):
        raise OrgNotFound()
    request[ORG] = org_id  # for the access log
    return org_id


def _key_id(request: web.Request) -> str:
    key_id = request.match_info["key_id"]
    if not validation.is_key_id(key_id):  # not an id this API hands out: no Redis lookup for it
        raise errors.KeyNotFound()
    return key_id


def _json_response(body: msgspec.Struct, status: int = 200, **headers: str) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json", headers=headers)


async def whoami(request: web.Request) -> web.Response:
    """GET /v1/me: the caller behind the credential (operator, or which org and scopes)."""
    principal = await _principal(request)
    return _json_response(schemas.Caller(
        actor=principal.actor, operator=principal.is_operator, org_id=principal.org_id,
        scopes=sorted(principal.scopes), can_manage=principal.is_operator or MANAGE in principal.scopes,
        grants_any=principal.is_operator or principal.grants_any,
    ))


async def list_permissions(request: web.Request) -> web.Response:
    """GET /v1/permissions?q=: the scope catalogue, searchable by scope or label."""
    (await _principal(request)).require(READ)
    catalogue = request.app[ADMIN].rules.current.catalogue(request.query.get("q", ""))
    return _json_response(schemas.PermissionList([schemas.Permission(p.scope, p.resource, p.action, p.label) for p in catalogue]))


async def create_key(request: web.Request) -> web.Response:
    """POST /v1/orgs/{org_id}/api-keys: create a key; the secret is in this response only."""
    st = request.app[ADMIN]
    principal = await _principal(request)
    org_id = _org_id(request)
    principal.require(MANAGE, org_id)
    body = await _read_json(request, _create_decoder)
    now = st.now_ms()
    try:
        name = validation.key_name(body.name)
        scopes = validation.key_scopes(body.scopes, st.rules.current.permissions)
        # An org key's keys expire no later than it does; an operator's are not capped.
        expires_at = validation.expiry_within(body.expires_in, now, principal.expires_at)
        limits = None if body.limits is None else _limits(st, body.limits)
    except validation.InvalidField as exc:
        raise FieldError(exc.field, str(exc), **exc.extra) from None
    refused = principal.grantable(scopes)
    if refused:
        raise errors.ScopeNotGrantable(
            f"This key cannot grant scopes it does not hold: {', '.join(refused)}.", scopes=refused
        )
    _within_caller(st, principal, limits)
    # Operators are trusted and not held to the org's limits (their keys still count toward the
    # org's total); nobody passes the memory mark.
    quota = await st.creates.admit(org_limits=not principal.is_operator)
    record, secret = await st.store.create(
        org_id=org_id, name=name, scopes=scopes, expires_at=expires_at, actor=principal.actor, now_ms=now,
        quota=quota, limits=limits,
    )
    if principal.key_id is not None:  # a person or an operator has no key to be revoked
        await _refuse_if_creator_revoked(st, principal, org_id, record.id)
    return _json_response(
        schemas.created_out(record, now, secret, st.limits.effective), 201,
        Location=f"/v1/orgs/{org_id}/api-keys/{record.id}",
    )


def _within_caller(st: AdminState, principal: Principal, limits, current: KeyRecord | None = None) -> None:
    # SECURITY: an org key cannot give a key (one it creates, edits or rolls) more than its own
    # limits allow, as it cannot grant scopes it does not hold: else a key with a quota would mint
    # itself an unmetered one. Making an edited key stricter is always allowed, as removing a scope
    # is. Operators and people (org admins signed in) are held to the configured ceilings only.
    if principal.key_id is None:
        return
    new = st.limits.effective(limits)
    looser = validation.looser_than(new, st.limits.effective(principal.limits))
    if current is not None:  # only what the edit loosens
        loosened = {cap.window for cap, _ in validation.looser_than(new, st.limits.effective(current.limits))}
        looser = [(cap, mine) for cap, mine in looser if cap.window in loosened]
    if looser:
        raise errors.LimitsExceedCaller("A key can only give keys limits no looser than its own: " + "; ".join(
            f"per {cap.window} {'no limit' if mine is None else mine}, where this key has {cap.limit}"
            for cap, mine in looser) + ".")


def _limits(st: AdminState, specs: list[schemas.LimitSpec]):
    """A request's limits, checked (InvalidField "limits"), against the configured ceilings too."""
    return validation.key_limits(((x.window, _integral(x.limit)) for x in specs), st.limits.check)


def _integral(value: int | float) -> int | float:
    return int(value) if isinstance(value, float) and value.is_integer() else value


async def _refuse_if_creator_revoked(st: AdminState, principal: Principal, org_id: str, key_id: str) -> None:
    # SECURITY: a cascade revocation of the creator that ran while this create was in flight may
    # have read the org before this key was written. The creator's record, read after the write,
    # says so; the new key is then revoked before anyone has seen its secret.
    creator = await st.store.get(principal.key_id or "")
    if creator is not None and creator.revoked_at is None:
        return
    await st.store.revoke(org_id=org_id, key_id=key_id, actor=principal.actor, now_ms=st.now_ms())
    raise errors.RevokedApiKey()


async def _read_json(request: web.Request, decoder: msgspec.json.Decoder):
    # JSON is UTF-8 (RFC 8259); a body declared in another charset would be misread, so refuse it.
    charset = (request.charset or "utf-8").lower()
    if request.content_type != "application/json" or charset not in ("utf-8", "utf8"):
        raise errors.UnsupportedMediaType()
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise errors.PayloadTooLarge(f"The body must be at most {MAX_BODY} bytes.")
    try:
        async with asyncio.timeout(request.app[ADMIN].settings.body_timeout):  # SECURITY: slow bodies
            raw = await request.read()
    except TimeoutError:
        raise errors.RequestTimeout() from None  # closed after answering (envelope_middleware)
    except web.RequestPayloadError:  # e.g. "Content-Encoding: gzip" over bytes that are not gzip
        raise errors.BadRequest("The request body could not be read (check Content-Encoding).") from None
    try:
        body = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _field_error(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter for invalid UTF-8
        raise errors.InvalidJson() from None
    # SECURITY: {"scopes": [...], "scopes": [...]} means one thing to this parser (the last) and
    # another to a proxy or log reader that keeps the first; refuse it. The body is a valid flat
    # object by now, so this second parse is cheap and cannot recurse deeply.
    json.loads(raw, object_pairs_hook=_no_duplicate_fields)
    return body


def _no_duplicate_fields(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for name, value in pairs:
        if name in seen:
            raise FieldError(name, "The field appears more than once.")
        seen[name] = value
    return seen


def _field_error(message: str) -> FieldError:
    # msgspec: "Expected `str`, got `int` - at `$.name`", "Object contains unknown field `x`",
    # "Object missing required field `name`".
    field = path = ""
    if " - at `$." in message:
        message, _, path = message.rpartition(" - at `$.")
        field = path.rstrip("`").split("[", 1)[0]
    elif "field `" in message:
        field = message.split("field `", 1)[1].split("`", 1)[0]
    if field == "expires_in":
        message = f"expires_in must be one of: {', '.join(EXPIRY_CHOICES)}."
    elif field == "grace_period":
        message = f"grace_period must be one of: {', '.join(GRACE_CHOICES)}."
    elif field == "limits":
        message = _limits_message(message, path)
    return FieldError(field or "body", message.rstrip(".") + ".")


def _limits_message(message: str, path: str) -> str:
    # msgspec's words ("Expected `int` >= 1") with the item named, as validation.key_limits says it.
    item = path.rstrip("`").split(".", 1)
    where = item[0]
    if len(item) == 2 and item[1] == "window":
        return f"{where}.window must be one of: {', '.join(WINDOWS)}."
    if len(item) == 2 and item[1] == "limit":
        return f"{where}.limit must be an integer from 1 to {MAX_LIMIT}."
    if "length" in message:
        return (f"limits holds 1 to {len(WINDOWS)} limits, one per window; null clears the key's own "
                "(the default applies).")
    if "missing required field" in message or "unknown field" in message:
        return f"{where}: each limit is {{\"window\": WINDOW, \"limit\": N}} ({message.rstrip('.')})."
    return f"{where}: {message.rstrip('.')}; each limit is {{\"window\": WINDOW, \"limit\": N}}."


async def list_keys(request: web.Request) -> web.Response:
    """GET /v1/orgs/{org_id}/api-keys: newest first, paginated; revoked only on request."""
    st = request.app[ADMIN]
    principal = await _principal(request)
    org_id = _org_id(request)
    principal.require(READ, org_id)
    include_revoked, limit, cursor = _list_params(request, decode_cursor, "include_revoked")
    page = await st.store.list(org_id, limit=limit, cursor=cursor, include_revoked=include_revoked)
    if not page.records:
        await _require_org(st, principal, org_id)
    now = st.now_ms()
    return _json_response(schemas.ApiKeyList([schemas.key_out(r, now, st.limits.effective) for r in page.records],
                                             page.next_cursor))


def _list_params(request: web.Request, decode: Callable[[str], object], *flags: str) -> tuple:
    """The boolean ``flags``, then limit and cursor, of a paginated list, validated alike for
    every list: (*flag values, limit, cursor or None)."""
    q = request.query
    for name in (*flags, "limit", "cursor"):
        if len(q.getall(name, ())) > 1:  # which one would count? Say so instead of guessing.
            raise FieldError(name, f"{name} is given more than once.")
    values = [_bool_param(q.get(name, "false"), name) for name in flags]
    limit_text = q.get("limit", "50")
    # Plain ASCII digits: int() would also take " 5", "5_0" and other scripts' digits.
    if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text) <= 100):
        raise FieldError("limit", "limit must be an integer from 1 to 100.")
    cursor = q.get("cursor") or None
    if cursor is not None:
        try:
            decode(cursor)
        except ValueError:
            raise FieldError("cursor", "cursor is not one returned by this API.") from None
    return (*values, int(limit_text), cursor)


async def _require_org(st: AdminState, principal: Principal, org_id: str) -> None:
    """404 org_not_found for an org with no keys (an org exists from its first key on). Only
    operators can get here with such an org: an org key's own org holds that key."""
    if principal.is_operator and not await st.store.org_exists(org_id):
        raise OrgNotFound()


def _bool_param(value: str, name: str) -> bool:
    # Only what the OpenAPI document allows for a boolean query parameter.
    if value.lower() == "true":
        return True
    if value.lower() == "false":
        return False
    raise FieldError(name, f"{name} must be true or false.")


async def get_key(request: web.Request) -> web.Response:
    """GET /v1/orgs/{org_id}/api-keys/{key_id}: one key, never the secret."""
    st = request.app[ADMIN]
    principal = await _principal(request)
    org_id = _org_id(request)
    principal.require(READ, org_id)
    record = await st.store.get_for_org(org_id, _key_id(request))
    if record is None:
        await _require_org(st, principal, org_id)
        raise errors.KeyNotFound()
    now = st.now_ms()
    usage = await _limit_usage(st, record, now)
    return _json_response(schemas.detail_out(record, now, st.limits.effective, usage), ETag=_etag(record))


async def _limit_usage(st: AdminState, record: KeyRecord, now: int) -> list | None:
    """(limit, used so far, reset time) per enforced limit; None when Redis cannot say (the key
    itself was read: the page shows it without the bars rather than failing)."""
    limits = st.limits.effective(record.limits)
    try:
        used = await st.store.limits.usage(record.id, limits, now)
    except store_mod.FAULTS:
        return None
    return [(limit, used.get(limit.window, 0), window_bounds(limit.window, now)[1]) for limit in limits]


async def get_key_usage(request: web.Request) -> web.Response:
    """GET .../{key_id}/usage?from=&to=&granularity=: the key's requests per UTC hour or day by outcome."""
    st = request.app[ADMIN]
    principal = await _principal(request)
    org_id = _org_id(request)
    principal.require(READ, org_id)
    q = request.query
    for name in ("from", "to", "granularity"):
        if len(q.getall(name, ())) > 1:
            raise FieldError(name, f"{name} is given more than once.")
    try:
        win = history.window(st.now_ms(), q.get("from"), q.get("to"), q.get("granularity"),
                             st.settings.usage_hourly_days)
    except validation.InvalidField as exc:
        raise FieldError(exc.field, str(exc), **exc.extra) from None
    key_id = _key_id(request)
    record = await st.store.get_for_org(org_id, key_id)  # tenancy as GET one key
    if record is None:
        await _require_org(st, principal, org_id)
        raise errors.KeyNotFound()
    buckets, totals = history.buckets(win, await st.store.ledger.history(key_id, win))
    return _json_response(schemas.usage_out(key_id, win.granularity, win.from_ms, win.to_ms, buckets, totals))


async def revoke_key(request: web.Request) -> web.Response:
    """POST .../{key_id}/revoke: idempotent; the gateways refuse the key from now on."""
    st = request.app[ADMIN]
    principal = await _principal(request)
    org_id = _org_id(request)
    principal.require(MANAGE, org_id)
    key_id = _key_id(request)
    cascade = await _read_cascade(request)
    if await st.store.get_for_org(org_id, key_id) is None:
        await _require_org(st, principal, org_id)
        raise errors.KeyNotFound()
    now = st.now_ms()
    # Answered only once every live gateway has dropped the key (or can no longer use its cache).
    record = await st.store.revoke(org_id=org_id, key_id=key_id, actor=principal.actor, now_ms=now,
                                   ack_timeout=ACK_TIMEOUT)
    if record is None:
        raise errors.KeyNotFound()
    revoked = [key_id]
    if cascade:
        revoked += await _revoke_descendants(st, org_id, key_id, principal.actor, now)
    return _json_response(schemas.revoked_out(record, now, revoked, st.limits.effective))


async def _read_cascade(request: web.Request) -> bool:
    """``cascade`` from the query (?cascade=true) or an optional JSON body {"cascade": true}."""
    given = request.query.getall("cascade", ())
    if len(given) > 1:
        raise FieldError("cascade", "cascade is given more than once.")
    in_query = _bool_param(given[0], "cascade") if given else False
    # Both may be given (the document allows it): either one asking means cascade.
    in_body = request.body_exists and (await _read_json(request, _revoke_decoder)).cascade
    return in_query or in_body


async def _revoke_descendants(st: AdminState, org_id: str, key_id: str | set[str], actor: str, now: int) -> list[str]:
    """Revoke every key the key (or each of a set of keys: a leak report's) created, recursively,
    each acknowledged like a single revoke; return their ids, level by level."""
    done, order = ({key_id} if isinstance(key_id, str) else set(key_id)), []
    while True:
        # SECURITY: each level is revoked before its own children are looked for, so a key one
        # of them creates meanwhile is found by the next walk, or refused by that create's own
        # check of its creator (_refuse_if_creator_revoked).
        level = created_by_any(await st.store.org_records(org_id), done)
        if not level:
            return order
        for first in range(0, len(level), CASCADE_BATCH):
            await asyncio.gather(*(
                st.store.revoke(org_id=org_id, key_id=child, actor=actor, now_ms=now, ack_timeout=ACK_TIMEOUT)
                for child in level[first:first + CASCADE_BATCH]))
        done.update(level)
        order += level


def _etag(record) -> str:
    return f'"{record.version}"'


async def _key_for_change(request: web.Request) -> tuple[AdminState, Principal, str, str]:
    """The state, the caller (allowed to manage the org), the org and key ids of a roll or edit."""
    st = request.app[ADMIN]
    principal = await _principal(request)
    org_id = _org_id(request)
    principal.require(MANAGE, org_id)
    return st, principal, org_id, _key_id(request)


async def _found(st: AdminState, principal: Principal, org_id: str, key_id: str):
    record = await st.store.get_for_org(org_id, key_id)
    if record is None:
        await _require_org(st, principal, org_id)
        raise errors.KeyNotFound()
    return record


def _grantable(principal: Principal, scopes) -> None:
    refused = principal.grantable(list(scopes))
    if refused:
        raise errors.ScopeNotGrantable(
            f"This key cannot grant scopes it does not hold: {', '.join(refused)}.", scopes=refused)


async def roll_key(request: web.Request) -> web.Response:
    """POST .../{key_id}/roll: a new secret (in this response only); the current one works for the
    grace period. With grace_period "now", answered once every gateway refuses the old secret."""
    st, principal, org_id, key_id = await _key_for_change(request)
    body = await _read_json(request, _roll_decoder)
    record = await _found(st, principal, org_id, key_id)
    # SECURITY: the new secret carries all of the key's scopes: an org key may only roll a key
    # whose scopes it could grant (as on create).
    _grantable(principal, record.scopes)
    _within_caller(st, principal, record.limits)
    # SECURITY: nor a key that outlives it: the new secret would outlast the caller (create caps
    # expires_in at the caller's own expiry for the same reason).
    if principal.expires_at is not None and (record.expires_at is None or record.expires_at > principal.expires_at):
        raise errors.KeyOutlivesCaller(
            "This key expires " + (rfc3339(principal.expires_at) or "") + "; it cannot roll a key that expires "
            + ("never" if record.expires_at is None else "later, at " + (rfc3339(record.expires_at) or "")) + ".",
            max_expires_at=rfc3339(principal.expires_at))
    rolled = await st.store.roll(org_id=org_id, key_id=key_id, grace=body.grace_period, actor=principal.actor,
                                 now_ms=st.now_ms(), ack_timeout=ACK_TIMEOUT)
    if rolled is None:
        raise errors.KeyNotFound()
    done, secret, previous_end = rolled
    done = msgspec.structs.replace(done, last_used_at=record.last_used_at, request_count=record.request_count)
    return _json_response(schemas.rolled_out(done, st.now_ms(), secret, previous_end, st.limits.effective),
                          ETag=_etag(done), **{"Cache-Control": "no-store"})


async def edit_key(request: web.Request) -> web.Response:
    """PATCH .../{key_id}: name, scopes, expiry, limits; If-Match: "<version>" (412 when stale). Answered
    once every gateway applies the change (a removed scope is refused everywhere by then)."""
    st, principal, org_id, key_id = await _key_for_change(request)
    try:
        if_version = validation.if_match(request.headers.get("If-Match"))
    except validation.InvalidField as exc:
        raise FieldError(exc.field, str(exc)) from None
    body = await _read_json(request, _edit_decoder)
    given = {f for f in body.__struct_fields__ if getattr(body, f) is not msgspec.UNSET}
    if not given:
        raise FieldError("body", "Give at least one of name, scopes, expires_in, expires_at, limits.")
    if {"expires_in", "expires_at"} <= given:
        raise FieldError("expires_at", "Give expires_in or expires_at, not both.")
    record = await _found(st, principal, org_id, key_id)
    now = st.now_ms()
    changes: dict = {}
    try:
        if "name" in given:
            changes["name"] = validation.key_name(body.name)
        if "scopes" in given:
            changes["scopes"] = validation.key_scopes(body.scopes, st.rules.current.permissions)
        if "expires_in" in given:
            changes["expires_at"] = validation.expiry_within(body.expires_in, now, principal.expires_at)
        elif "expires_at" in given:
            changes["expires_at"] = validation.earlier_expiry(body.expires_at, now, record.expires_at)
        if "limits" in given:
            changes["limits"] = None if body.limits is None else _limits(st, body.limits)
    except validation.InvalidField as exc:
        raise FieldError(exc.field, str(exc), **exc.extra) from None
    # SECURITY: an org key may add only scopes it holds (removing one is always allowed).
    _grantable(principal, [s for s in changes.get("scopes", ()) if s not in record.scopes])
    if "limits" in changes:
        _within_caller(st, principal, changes["limits"], record)
    done = await st.store.edit(org_id=org_id, key_id=key_id, actor=principal.actor, now_ms=now,
                               ack_timeout=ACK_TIMEOUT, if_version=if_version, default_limits=st.limits.default,
                               **changes)
    if done is None:
        raise errors.KeyNotFound()
    done = msgspec.structs.replace(done, last_used_at=record.last_used_at, request_count=record.request_count)
    return _json_response(schemas.key_out(done, st.now_ms(), st.limits.effective), ETag=_etag(done))


async def list_audit_events(request: web.Request) -> web.Response:
    """GET /v1/orgs/{org_id}/audit-events?key_id=: the activity log (creates, edits, rolls, revokes
    with actor, time and what changed), newest first, paginated as far back as it goes."""
    st = request.app[ADMIN]
    principal = await _principal(request)
    org_id = _org_id(request)
    principal.require(READ, org_id)
    key_id, limit, cursor = _audit_params(request)
    page = await st.store.activity(org_id, key_id=key_id, limit=limit, cursor=cursor)
    if page is None:  # not a key of this org: the same 404 as GET of the key
        await _require_org(st, principal, org_id)
        raise errors.KeyNotFound()
    if not page.events:
        await _require_org(st, principal, org_id)
    return _json_response(schemas.AuditEventList([schemas.audit_event_out(e) for e in page.events], page.next_cursor))


def _audit_params(request: web.Request) -> tuple[str | None, int, str | None]:
    """key_id (optional), limit and cursor of the activity log; a cursor of one key's log is
    refused for another key."""
    given = request.query.getall("key_id", ())
    if len(given) > 1:
        raise FieldError("key_id", "key_id is given more than once.")
    key_id = given[0] if given and given[0] else None
    if key_id is not None and not validation.is_key_id(key_id):
        raise FieldError("key_id", "key_id must be a key ID: 'key_' followed by letters and digits.")
    limit, cursor = _list_params(request, decode_audit_cursor)
    if key_id is not None and cursor is not None and decode_audit_cursor(cursor)[1] != key_id:
        raise FieldError("cursor", "cursor is not one returned by this API for this key_id.")
    return key_id, limit, cursor


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 description of this API."""
    return web.json_response(build_openapi(tuple(request.app[ADMIN].rules.current.permissions)))


async def page(request: web.Request) -> web.Response:
    """GET /: the Settings -> API Keys page (plain HTML; the script does the rest)."""
    return _static_response("index.html")


async def static_file(request: web.Request) -> web.Response:
    """GET /static/{file}: the page's scripts, style sheet and icon, nothing else."""
    name = request.match_info["file"]
    if name not in STATIC_FILES:
        raise errors.NotFound("No such file.")
    return _static_response(name)


async def favicon(request: web.Request) -> web.Response:
    """GET /favicon.ico: the page's SVG icon, for browsers and tools that ask for this path."""
    return _static_response("favicon.svg")


def _static_response(name: str) -> web.Response:
    path = STATIC_DIR / name
    return web.Response(
        body=path.read_bytes(), content_type=CONTENT_TYPES[path.suffix], charset="utf-8",
        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache",
                 "Cross-Origin-Opener-Policy": "same-origin"},
    )
