"""Page sign-in: the admin API as the OpenID provider's confidential client (backend-for-frontend).

Routes (the contract, docs/admin-api.md "Signing in"): GET /auth/config, GET /auth/login, GET
/auth/callback, GET /auth/session, POST /auth/logout. The browser never sees a token: it holds
an opaque session cookie; Redis holds sha256 of it (gateway/store/sessions.py) and the tokens
sealed with a key derived from it (admin_api/signin_rules.py).

Protocol pieces come from Authlib (the authorization URL, the PKCE S256 challenge, the token
request bodies); HTTP is aiohttp's (the verifier's client session); the ID token is checked by
admin_api/oidc.py against the same cached JWKS as access tokens. Org and role come from the ID
token's claims, mapped by admin_api/claims.py as for access tokens.

SECURITY: the session id, state, code, verifier and tokens are never logged nor put in an
error message (the access log has the path only, never the query string).
"""

from __future__ import annotations

import asyncio
import hmac
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

import aiohttp
from aiohttp import web
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from admin_api import signin_rules as rules
from admin_api.auth import MANAGE, READ, Principal
from admin_api.claims import BadClaims, person
from admin_api.guard import AuthGuard
from admin_api.oidc import BadIdToken, OidcVerifier
from gateway import errors
from gateway.config import AdminSettings
from gateway.model import rfc3339
from gateway.store import FAULTS, SessionStore
from gateway.throttle import FailureThrottle

UNSAFE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
REFRESH_POLL = 0.1  # seconds between looks at a session another process is refreshing
TOUCH_EVERY_MS = 10_000  # a session's idle expiry is renewed at most this often (a quarter of a shorter idle)
# The failure reasons (the label set of gateway_admin_signin_failures_total: bounded).
REASONS = ("provider_error", "state_unknown", "state_not_bound", "code_missing", "code_refused", "id_token_invalid",
           "claims_invalid", "no_org_role", "idp_unavailable", "throttled")
# The page of an error: only the page's style sheet may load.
ERROR_PAGE_CSP = "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


class _RefreshRefused(Exception):
    """The provider refused the refresh (invalid_grant and the like): the session ends."""


@dataclass
class Session:
    sha: str
    fields: dict

    def int(self, name: str) -> int:
        return int(self.fields.get(name) or 0)


class SignIn:
    """Page sign-in for one admin API process."""

    def __init__(self, settings: AdminSettings, oidc: OidcVerifier, sessions: SessionStore, guard: AuthGuard,
                 clock: Callable[[], float], metrics) -> None:
        self.settings = settings
        self.oidc = oidc
        self.sessions = sessions
        self.guard = guard
        self.clock = clock
        self.metrics = metrics
        self.session_cookie, self.login_cookie = rules.cookie_names(settings.cookie_insecure)
        self.redirect_uri = settings.public_url.rstrip("/") + "/auth/callback"
        self.post_logout_uri = settings.public_url.rstrip("/") + "/"
        self.public_origin = rules.origin_of(settings.public_url)
        self._refresh_locks: dict[str, asyncio.Lock] = {}
        # A refresh makes up to 5 provider calls (metadata, JWKS twice, token, ...), each within
        # --oidc-timeout: the claim outlasts that, and a waiter gives up (503) no sooner.
        self.refresh_claim = max(10.0, 5 * settings.oidc_timeout + 5)
        self.starts = FailureThrottle(limit=settings.signin_rate, window=60.0, max_clients=settings.throttle_max_clients,
                                      ipv6_prefix=settings.throttle_ipv6_prefix, clock=clock)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- cookies ---------------------------------------------------------------------------
    def _set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int, same_site: str) -> None:
        response.headers.add("Set-Cookie", rules.cookie_header(name, value, max_age=max_age, same_site=same_site,
                                                               insecure=self.settings.cookie_insecure))

    def clear_session_cookie(self, response: web.StreamResponse) -> None:
        self._set_cookie(response, self.session_cookie, "", 0, "Strict")

    # -- the provider --------------------------------------------------------------------
    async def _metadata(self) -> dict:
        if self.oidc.backoff(self.clock()) and self.oidc.metadata is None:
            raise errors.IdpUnavailable(errors.IDP_DOWN_SIGNIN)
        try:
            return await self.oidc.provider_metadata()
        except errors.IdpUnavailable:
            raise errors.IdpUnavailable(errors.IDP_DOWN_SIGNIN) from None

    async def _token_request(self, body: str) -> tuple[int, dict]:
        """POST to the token endpoint (client_secret_basic): (status, JSON object). Unreachable,
        a 5xx or nonsense: IdpUnavailable, and the back-off starts."""
        now = self.clock()
        if self.oidc.backoff(now):
            raise errors.IdpUnavailable(errors.IDP_DOWN_SIGNIN)
        metadata = await self._metadata()
        endpoint = metadata.get("token_endpoint")
        s = self.settings
        # RFC 6749 2.3.1: id and secret are form-encoded before they go into Basic.
        auth = aiohttp.BasicAuth(urllib.parse.quote(s.oidc_client_id, safe=""),
                                 urllib.parse.quote(s.oidc_client_secret, safe=""))
        try:
            if not isinstance(endpoint, str):
                raise ValueError("no token_endpoint")
            async with self.oidc.http.post(endpoint, data=body.encode(), auth=auth, allow_redirects=False,
                                           headers={"Content-Type": "application/x-www-form-urlencoded",
                                                    "Accept": "application/json"}) as response:
                answer = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            self.oidc.failed(now)
            raise errors.IdpUnavailable(errors.IDP_DOWN_SIGNIN) from None
        if status >= 500 or not isinstance(answer, dict):
            self.oidc.failed(now)
            raise errors.IdpUnavailable(errors.IDP_DOWN_SIGNIN)
        return status, answer

    # -- login and callback ------------------------------------------------------------------
    async def login(self, request: web.Request) -> web.Response:
        """GET /auth/login?return_to=: a new state, nonce and PKCE verifier; 302 to the provider."""
        return_to = rules.safe_return_to(request.query.get("return_to"))
        headers = list(request.headers.items())
        wait = self.guard.throttle.retry_after(self.guard.client(request.remote or "", headers)) \
            if self.guard.throttle.tracking else 0
        if wait:
            self.guard.throttled += 1
            raise errors.TooManyFailedAttempts(wait)
        client = self.guard.client(request.remote or "", headers)
        wait = self.starts.retry_after(client)
        if wait:
            raise errors.TooManySignIns(self.settings.signin_rate, wait)
        self.starts.record_failure(client)  # counted as started, used or not
        # The provider is asked again (metadata and JWKS) at most once per --oidc-backoff, so a
        # provider that went down shows the 503 page instead of a redirect to nowhere.
        now = self.clock()
        if now - self.oidc.fetched_at >= max(1.0, self.settings.oidc_backoff):
            try:
                await self.oidc.load()
            except errors.IdpUnavailable:
                raise errors.IdpUnavailable(errors.IDP_DOWN_SIGNIN) from None
        metadata = await self._metadata()
        endpoint = metadata.get("authorization_endpoint")
        if not isinstance(endpoint, str):
            raise errors.IdpUnavailable(errors.IDP_DOWN_SIGNIN)
        state, nonce, verifier, binding = (rules.new_secret() for _ in range(4))
        await self.sessions.put_login(rules.digest(state), {
            "binding_sha256": rules.digest(binding), "verifier": verifier, "nonce": nonce, "return_to": return_to,
        }, rules.LOGIN_TTL * 1000)
        extra = {"prompt": "login"} if request.query.get("prompt") == "login" else {}
        url = prepare_grant_uri(endpoint, self.settings.oidc_client_id, "code", redirect_uri=self.redirect_uri,
                                scope=self.settings.oidc_scopes, state=state, nonce=nonce,
                                code_challenge=create_s256_code_challenge(verifier), code_challenge_method="S256",
                                **extra)
        response = web.Response(status=302, headers={"Location": url})
        self._set_cookie(response, self.login_cookie, binding, rules.LOGIN_TTL, "Lax")
        return response

    async def callback(self, request: web.Request) -> web.Response:
        """GET /auth/callback?code&state: the code redeemed (with the verifier), the ID token
        checked, the person mapped, a session created; 303 to return_to."""
        headers = list(request.headers.items())
        peer = request.remote or ""
        wait = self.guard.throttle.retry_after(self.guard.client(peer, headers)) if self.guard.throttle.tracking else 0
        if wait:
            self.guard.throttled += 1
            raise errors.TooManyFailedAttempts(wait)
        try:
            return await self._callback(request)
        except (errors.SignInFailed, errors.NoOrgRole):
            self.guard.failed(peer, headers)
            raise

    async def _callback(self, request: web.Request) -> web.Response:
        q = request.query
        login = None
        state = q.get("state")
        if rules.is_secret_shape(state) and len(q.getall("state", ())) == 1:
            login = await self.sessions.take_login(rules.digest(state))  # read once: a replay finds nothing
        if login is None:
            raise errors.SignInFailed("state_unknown", "This sign-in link is unknown, expired or already used; "
                                      "start again from the page.")
        binding = request.cookies.get(self.login_cookie)
        if binding is None or not hmac.compare_digest(rules.digest(binding), str(login.get("binding_sha256"))):
            raise errors.SignInFailed("state_not_bound", "This sign-in was started in another browser (or its "
                                      "cookie is missing); start again from the page.")
        if "error" in q:
            # The provider's own words (shortened; the page escapes them), only for a sign-in this
            # browser started: a crafted link cannot put its text on this origin's page.
            said = (q.get("error_description") or q.get("error") or "")[:300]
            raise errors.SignInFailed("provider_error", f"The identity provider did not sign you in: {said}")
        code = q.get("code")
        if not code or len(q.getall("code", ())) != 1:
            raise errors.SignInFailed("code_missing", "The identity provider's answer has no authorization code.")
        status, answer = await self._token_request(prepare_token_request(
            "authorization_code", code=code, redirect_uri=self.redirect_uri, code_verifier=login["verifier"]))
        if status != 200 or not isinstance(answer.get("id_token"), str):
            raise errors.SignInFailed("code_refused", "The identity provider refused to redeem the sign-in "
                                      f"({str(answer.get('error') or status)[:60]}); start again from the page.")
        claims = await self._id_token(answer["id_token"], login["nonce"])
        who = self._person(claims)
        if who.role == "none":
            raise errors.NoOrgRole(who.org_id)
        previous = request.cookies.get(self.session_cookie)
        if rules.is_secret_shape(previous):  # this browser's earlier session ends with the new sign-in
            await self.sessions.delete(rules.digest(previous or ""))
        sid = rules.new_secret()
        sha = rules.digest(sid)
        now = self.now_ms()
        s = self.settings
        email = claims.get("email") if isinstance(claims.get("email"), str) and who.actor.endswith(">") else ""
        await self.sessions.create(sha, {
            "sub": claims["sub"], "actor": who.actor, "email": email, "org_id": who.org_id, "role": who.role,
            "created_at": now, "refreshed_at": now, "last_seen": now, "csrf": rules.new_secret(),
            "enc": rules.seal(sid, {"refresh_token": answer.get("refresh_token"), "id_token": answer["id_token"]}),
        }, ttl_ms=int(min(s.session_idle, s.session_lifetime) * 1000), expires_ms=now + int(s.session_lifetime * 1000),
           now_ms=now)
        self.metrics.signins.inc()
        response = web.Response(status=303, headers={"Location": rules.safe_return_to(login.get("return_to"))})
        self._set_cookie(response, self.session_cookie, sid, int(s.session_lifetime), "Strict")
        self._set_cookie(response, self.login_cookie, "", 0, "Lax")
        return response

    async def _id_token(self, token: str, nonce: str | None) -> dict:
        try:
            return await self.oidc.id_token_claims(token, nonce)
        except errors.IdpUnavailable:
            raise errors.IdpUnavailable(errors.IDP_DOWN_SIGNIN) from None
        except BadIdToken as exc:
            raise errors.SignInFailed("id_token_invalid", "The identity provider's answer could not be trusted: "
                                      f"its ID token failed a check ({exc}).") from None

    def _person(self, claims: dict):
        s = self.settings
        try:
            return person(claims, org_claim=s.oidc_org_claim, roles_claim=s.oidc_roles_claim,
                          admin_role=s.oidc_admin_role, viewer_role=s.oidc_viewer_role)
        except BadClaims as exc:
            raise errors.SignInFailed("claims_invalid", f"The identity provider did not say who you are or which "
                                      f"org you belong to ({exc}).") from None

    def error_response(self, err: errors.ApiError) -> web.Response:
        """The HTML page of a sign-in error (one place), counted by reason."""
        reason = getattr(err, "reason", None) or {"no_org_role": "no_org_role", "idp_unavailable": "idp_unavailable",
                                                  "too_many_failed_attempts": "throttled",
                                                  "too_many_sign_ins": "throttled"}.get(err.code)
        if reason in REASONS:
            self.metrics.signin_failures.labels(reason).inc()
        response = web.Response(status=err.status, text=rules.error_page(err, sign_in_again=err.code == "no_org_role"),
                                content_type="text/html", charset="utf-8",
                                headers={"Content-Security-Policy": ERROR_PAGE_CSP, **err.headers()})
        if err.code != "idp_unavailable" and err.status != 429:
            self._set_cookie(response, self.login_cookie, "", 0, "Lax")
        return response

    def store_fault(self) -> web.Response:
        """Redis failed during a sign-in navigation: 503 as an HTML page (counted as a Redis error,
        as the envelope counts it); nothing was signed in."""
        self.metrics.redis_errors.inc()
        return self.error_response(errors.StoreUnavailable())

    # -- sessions ----------------------------------------------------------------------------
    async def _session(self, sid: str | None) -> Session | None:
        """The live session of a cookie value (None: none, unknown, ended; an ended one is deleted)."""
        if not rules.is_secret_shape(sid):
            return None
        sha = rules.digest(sid or "")
        fields = await self.sessions.get(sha)
        if fields is None:
            return None
        found = Session(sha, fields)
        now, s = self.now_ms(), self.settings
        if now >= found.int("created_at") + s.session_lifetime * 1000 or now >= found.int("last_seen") + s.session_idle * 1000:
            await self.sessions.delete(sha)
            return None
        return found

    async def current(self, request: web.Request) -> tuple[str, Session]:
        """The request's session, refreshed when due and touched; SessionExpired without one."""
        sid = request.cookies.get(self.session_cookie)
        found = await self._session(sid)
        if found is None or sid is None:
            raise errors.SessionExpired()
        now, s = self.now_ms(), self.settings
        if now - found.int("refreshed_at") >= s.session_refresh * 1000:
            found = await self._refresh(sid, found)
        elif now - found.int("last_seen") >= min(TOUCH_EVERY_MS, s.session_idle * 250):
            await self._touch(found, {"last_seen": now})
        return sid, found

    def _ttl(self, found: Session, now: int) -> tuple[int, int]:
        s = self.settings
        end = found.int("created_at") + int(s.session_lifetime * 1000)
        idle_end = min(end, now + int(s.session_idle * 1000))
        return max(1, idle_end - now), idle_end

    async def _touch(self, found: Session, fields: dict) -> None:
        now = self.now_ms()
        ttl, until = self._ttl(found, now)
        if not await self.sessions.update(found.sha, fields, ttl, until):
            raise errors.SessionExpired()
        found.fields.update({k: str(v) for k, v in fields.items()})

    async def _refresh(self, sid: str, found: Session) -> Session:
        """Re-read org and role from the provider (refresh_token grant), one refresh per
        session at a time in this process. Fail closed: never the old roles past the bound."""
        lock = self._refresh_locks.setdefault(found.sha, asyncio.Lock())
        try:
            async with lock:
                return await self._refresh_once(sid, found.sha)
        finally:
            if not lock.locked() and self._refresh_locks.get(found.sha) is lock:
                del self._refresh_locks[found.sha]

    async def _refresh_once(self, sid: str, sha: str) -> Session:
        """Across admin API processes: the one that claims the refresh in Redis does it; the
        others wait for its result (a refresh token that the provider rotates works once)."""
        deadline = time.monotonic() + self.refresh_claim
        while True:
            again = await self._session(sid)  # another request may have refreshed meanwhile
            if again is None:
                raise errors.SessionExpired()
            if self.now_ms() - again.int("refreshed_at") < self.settings.session_refresh * 1000:
                return again
            owner = rules.new_secret()
            if await self.sessions.claim_refresh(sha, owner, int(self.refresh_claim * 1000)):
                try:
                    return await self._do_refresh(sid, again)
                finally:
                    await self.sessions.release_refresh(sha, owner)
            if time.monotonic() >= deadline:
                raise errors.IdpUnavailable(errors.IDP_DOWN_SIGNIN)  # fail closed: never the old roles
            await asyncio.sleep(REFRESH_POLL)

    async def _do_refresh(self, sid: str, found: Session) -> Session:
        tokens = rules.unseal(sid, found.fields.get("enc", ""))
        refresh_token = tokens.get("refresh_token") if tokens else None
        if not isinstance(refresh_token, str) or not refresh_token:
            await self.sessions.delete(found.sha)
            raise errors.SessionExpired()
        status, answer = await self._token_request(prepare_token_request("refresh_token", refresh_token=refresh_token))
        id_token = answer.get("id_token")
        if status != 200 or not isinstance(id_token, str):
            await self.sessions.delete(found.sha)
            raise errors.SessionExpired()
        try:
            claims = await self.oidc.id_token_claims(id_token, None)
            who = self._person(claims)
        except errors.IdpUnavailable:
            raise errors.IdpUnavailable(errors.IDP_DOWN_SIGNIN) from None
        except (BadIdToken, errors.SignInFailed):
            await self.sessions.delete(found.sha)
            raise errors.SessionExpired() from None
        if claims.get("sub") != found.fields.get("sub"):
            await self.sessions.delete(found.sha)
            raise errors.SessionExpired()
        if who.role == "none":
            await self.sessions.delete(found.sha)
            raise errors.NoOrgRole(who.org_id)
        now = self.now_ms()
        email = claims.get("email") if isinstance(claims.get("email"), str) and who.actor.endswith(">") else ""
        await self._touch(found, {
            "actor": who.actor, "email": email, "org_id": who.org_id, "role": who.role, "refreshed_at": now,
            "last_seen": now,
            "enc": rules.seal(sid, {"refresh_token": answer.get("refresh_token") or refresh_token, "id_token": id_token}),
        })
        return found

    def principal(self, found: Session) -> Principal:
        role = found.fields.get("role")
        scopes = {"admin": frozenset({MANAGE, READ}), "viewer": frozenset({READ})}.get(role or "", frozenset())
        return Principal(actor=found.fields["actor"], org_id=found.fields["org_id"], scopes=scopes,
                         grants_any=role == "admin")

    async def request_principal(self, request: web.Request) -> Principal:
        """A /v1 request made with the session cookie (no Authorization): its person; unsafe
        methods need the CSRF token (and the page's Origin, when one is sent)."""
        _, found = await self.current(request)
        if request.method in UNSAFE_METHODS:
            self.check_csrf(request, found)
        return self.principal(found)

    def check_csrf(self, request: web.Request, found: Session) -> None:
        given = request.headers.getall("X-CSRF-Token", [])
        origins = request.headers.getall("Origin", [])
        if len(given) != 1 or len(origins) > 1 or not rules.csrf_ok(
                found.fields.get("csrf", ""), given[0], origins[0] if origins else None, self.public_origin):
            raise errors.CsrfFailed()

    def has_cookie(self, request: web.Request) -> bool:
        return self.session_cookie in request.cookies

    async def session_info(self, request: web.Request) -> dict:
        _, found = await self.current(request)
        f = found.fields
        return {"actor": f["actor"], "subject": f["sub"], "email": f.get("email") or None, "org_id": f["org_id"],
                "role": f["role"], "csrf_token": f["csrf"],
                "expires_at": rfc3339(found.int("created_at") + int(self.settings.session_lifetime * 1000)),
                "idle_timeout": int(self.settings.session_idle)}

    async def logout(self, request: web.Request) -> web.Response:
        """POST /auth/logout: the session deleted, the cookie cleared, and the provider's
        end-session URL (RP-initiated logout) when it has one."""
        sid = request.cookies.get(self.session_cookie)
        found = await self._session(sid)
        end_session_url = None
        if found is not None and sid is not None:
            self.check_csrf(request, found)
            await self.sessions.delete(found.sha)
            tokens = rules.unseal(sid, found.fields.get("enc", "")) or {}
            endpoint = (self.oidc.metadata or {}).get("end_session_endpoint")
            if isinstance(endpoint, str):
                params = {"post_logout_redirect_uri": self.post_logout_uri, "client_id": self.settings.oidc_client_id,
                          "state": rules.new_secret()}
                if isinstance(tokens.get("id_token"), str):
                    params = {"id_token_hint": tokens["id_token"], **params}
                sep = "&" if "?" in endpoint else "?"
                end_session_url = endpoint + sep + urllib.parse.urlencode(params)
        elif not request.headers.get("X-CSRF-Token"):
            # No session: clearing the cookie is harmless, but only for the page itself (a
            # cross-site form cannot send this header), not for any site that posts here.
            raise errors.CsrfFailed()
        response = web.json_response({"end_session_url": end_session_url})
        self.clear_session_cookie(response)
        return response

    async def live_sessions(self) -> int:
        return await self.sessions.live(self.now_ms())


SIGNIN = web.AppKey("signin", SignIn)


def add_routes(app: web.Application) -> None:
    """The /auth/* routes; without page sign-in (no SIGNIN in the app) they answer 404, but
    /auth/config, which says so."""
    r = app.router
    r.add_get("/auth/config", auth_config)
    r.add_get("/auth/login", auth_login)
    r.add_get("/auth/callback", auth_callback)
    r.add_get("/auth/session", auth_session)
    r.add_post("/auth/logout", auth_logout)


def _signin(request: web.Request) -> SignIn:
    found = request.app.get(SIGNIN)
    if found is None:
        raise errors.NotFound("Page sign-in is not configured (--oidc-client-id).")
    return found


async def auth_config(request: web.Request) -> web.Response:
    """GET /auth/config: whether the page offers "Sign in", and with which provider."""
    found = request.app.get(SIGNIN)
    return web.json_response({"sign_in": found is not None,
                              "issuer": found.settings.oidc_issuer if found is not None else None})


async def auth_login(request: web.Request) -> web.Response:
    """GET /auth/login?return_to=/path: 302 to the provider (HTML error page on failure)."""
    signin = _signin(request)
    try:
        return await signin.login(request)
    except (errors.IdpUnavailable, errors.TooManyFailedAttempts, errors.TooManySignIns) as err:
        return signin.error_response(err)
    except FAULTS:  # a browser navigation: the HTML page, as for every sign-in error
        return signin.store_fault()


async def auth_callback(request: web.Request) -> web.Response:
    """GET /auth/callback?code&state: 303 to return_to with the session cookie, else an HTML page."""
    signin = _signin(request)
    try:
        return await signin.callback(request)
    except (errors.SignInFailed, errors.NoOrgRole, errors.IdpUnavailable, errors.TooManyFailedAttempts) as err:
        return signin.error_response(err)
    except FAULTS:
        return signin.store_fault()


async def auth_session(request: web.Request) -> web.Response:
    """GET /auth/session: who is signed in, the CSRF token, when the session ends."""
    return web.json_response(await _signin(request).session_info(request))


async def auth_logout(request: web.Request) -> web.Response:
    """POST /auth/logout (cookie + X-CSRF-Token): {"end_session_url"}."""
    return await _signin(request).logout(request)
