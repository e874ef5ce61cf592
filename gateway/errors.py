"""Every error the gateway and the admin API answer with: HTTP status, stable code, fixed message.

ApiError
├── BadRequest (400): MalformedRequest, InvalidPath, AmbiguousCredentials, KeyInQuery, KeyInPath,
│   MethodOverrideRefused, PathOverrideRefused, HostOverrideRefused, MissingOriginalRequest
│   (AmbiguousOriginalRequest, InvalidOriginalMethod: the same code), InvalidJson,
│   ValidationFailed (FieldError: naming the field; WebhookUrlRefused), InvalidHost, SignInFailed, InvalidReport
├── Unauthorized (401, with WWW-Authenticate): MissingApiKey, InvalidApiKey, ExpiredApiKey,
│   RevokedApiKey, RolledApiKey, InvalidToken, MissingToken, SessionExpired
├── InvalidSignature (401, a secret-scanning report's signature; its own challenge): MissingSignature
├── Forbidden (403): InsufficientScope, NoOrgRole, InsufficientRole, ScopeNotGrantable, KeyOutlivesCaller,
│   LimitsExceedCaller, LeakHandlingNeedsPerson, CsrfFailed
├── NotFound (404): RouteNotFound, KeyNotFound, OrgNotFound, WebhookNotFound
├── MethodNotAllowed (405, with Allow)
├── KeyLimitReached (409), WebhookLimitReached (409), KeyConflict (409): KeyIsRevoked, KeyIsExpired
├── VersionMismatch (412)
├── RequestTimeout (408), PayloadTooLarge (413), UriTooLong (414), UnsupportedMediaType (415),
│   TooManyFailedAttempts (429), TooManyCreates (429), TooManySignIns (429), TooManyReports (429), TooManyTestSends (429),
│   HeadersTooLarge (431)
├── LimitExceeded (429, with Retry-After and the limit headers): RateLimited, QuotaExceeded
│   (their CostOverRate / CostOverQuota: the route costs more than the whole limit)
├── ServiceUnavailable (503, with Retry-After): AuthUnavailable, IdpUnavailable, StoreUnavailable (StoreUnconfirmed),
│   StoreFull, LimitUnavailable: RateLimitUnavailable, QuotaUnavailable, ScannerKeysUnavailable
└── UpstreamUnavailable (502), UpstreamTimeout (504)
"""

from __future__ import annotations

from typing import Any

REALM = "api"


class ApiError(Exception):
    """Base: carries the HTTP status, the stable ``code`` and a public message."""

    status = 500
    code = "internal_error"
    message = "Internal error."

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        super().__init__(message or self.message)
        if message:
            self.message = message
        self.extra = extra  # extra fields for the JSON envelope (e.g. required_scope)

    retry_after: int | None = None  # seconds: sent as Retry-After (429s, 503s)
    # Headers every answer of this request carries, whatever the error (a limited key's RateLimit
    # headers: gateway.limiter); sent after the error's own.
    more_headers: dict[str, str] | None = None

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class BadRequest(ApiError):
    status, code, message = 400, "bad_request", "The request is malformed."


class MalformedRequest(BadRequest):
    code, message = "malformed_request", "The request is not valid HTTP/1.1."


class InvalidHost(BadRequest):
    code, message = "invalid_host", "The request needs exactly one Host header with a valid host name."


class InvalidPath(BadRequest):
    code, message = "invalid_path", "The request path is not in canonical form."


class AmbiguousCredentials(BadRequest):
    code = "ambiguous_credentials"
    message = "Send exactly one credential: one Authorization or one X-API-Key header."


class KeyInQuery(BadRequest):
    code = "api_key_in_query"
    message = "API keys are not accepted in the query string; send them in a header."


class KeyInPath(BadRequest):
    code = "api_key_in_path"
    message = "API keys are not accepted in the URL path; send them in a header."


class MethodOverrideRefused(BadRequest):
    code = "method_override_refused"
    message = "Method-override parameters such as _method are not accepted; send the real method."


class PathOverrideRefused(BadRequest):
    code = "path_override_refused"
    message = "Path-override headers such as X-Original-URL are not accepted; send the real path."


class HostOverrideRefused(BadRequest):
    code = "host_override_refused"
    message = ("Host- and scheme-override headers such as X-Forwarded-Host, X-Host or Forwarded are not "
               "accepted; the edge sets them.")


class MissingOriginalRequest(BadRequest):
    code = "missing_original_request"
    message = (
        "Forward-auth needs the original request: X-Original-Method and X-Original-URI (nginx), "
        "X-Forwarded-Method and X-Forwarded-Uri (Traefik), or a path under /envoy/ (Envoy), once each."
    )


# The two below keep missing_original_request, the code forward-auth has always answered (and
# docs/forward-auth.md documents) for any check request that does not name one original request:
# edges and monitors match on it. Their own classes say in code which case it was.
class AmbiguousOriginalRequest(MissingOriginalRequest):
    message = "The check request names more than one original request (a repeated header, or mixed conventions)."


class InvalidOriginalMethod(MissingOriginalRequest):
    message = "The original method is not an HTTP method token."


class InvalidJson(BadRequest):
    code, message = "invalid_json", "The request body is not a valid JSON object."


class SignInFailed(BadRequest):
    """400 of the sign-in callback; ``reason`` (a short word, the metric's label) says what failed."""

    code, message = "sign_in_failed", "Sign-in failed."

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)
        self.reason = reason


class ValidationFailed(BadRequest):
    code, message = "validation_failed", "The request body is invalid."


class FieldError(ValidationFailed):
    """400 naming the field at fault (admin API)."""

    def __init__(self, field: str, message: str, **extra: Any) -> None:
        super().__init__(message, field=field, **extra)


class InvalidReport(BadRequest):
    """400 of a signed secret-scanning report that is not one (the message says what is wrong)."""

    code, message = "invalid_report", "The report is not a JSON array of {token, type, url, source} objects."


class InvalidSignature(ApiError):
    """401 of a secret-scanning report whose signature does not verify (not a Bearer challenge)."""

    status, code = 401, "invalid_signature"
    message = "The report's signature does not verify with a public key the scanner publishes; nothing was changed."

    def headers(self) -> dict[str, str]:
        # RFC 9110 15.5.2: a 401 carries a challenge; this one names the scheme the report needs.
        return {"WWW-Authenticate": f'Github-Public-Key-Signature realm="{REALM}"'}


class MissingSignature(InvalidSignature):
    code = "missing_signature"
    message = "Send the report with its Github-Public-Key-Identifier and Github-Public-Key-Signature headers."
class WebhookUrlRefused(FieldError):
    """400: the endpoint URL is not one webhooks may be sent to (SSRF policy, gateway.urlpolicy)."""

    code = "webhook_url_refused"

    def __init__(self, reason: str) -> None:
        super().__init__("url", reason)


class Unauthorized(ApiError):
    status, code, message = 401, "unauthorized", "Authentication failed."
    rfc6750_error: str | None = "invalid_token"

    def headers(self) -> dict[str, str]:
        if self.rfc6750_error is None:
            return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
        return {
            "WWW-Authenticate": (
                f'Bearer realm="{REALM}", error="{self.rfc6750_error}", '
                f'error_description="{self.message}"'
            )
        }


class MissingApiKey(Unauthorized):
    code, message = "missing_api_key", "An API key is required."
    rfc6750_error = None  # RFC 6750 3.1: no error code when no credential was sent


class InvalidApiKey(Unauthorized):
    code, message = "invalid_api_key", "The API key is not valid."


class ExpiredApiKey(Unauthorized):
    code, message = "expired_api_key", "The API key has expired."


class RevokedApiKey(Unauthorized):
    code, message = "revoked_api_key", "The API key has been revoked."


class RolledApiKey(Unauthorized):
    code, message = "rolled_api_key", "The API key was rolled: use its new secret."


class InvalidToken(Unauthorized):
    code, message = "invalid_token", "The admin credential is not valid."


class MissingToken(Unauthorized):
    code, message = "missing_token", ("Send an operator token, an API key of the org or an access token of the identity provider "
                                       "as Authorization: Bearer, or sign in on the page.")
    rfc6750_error = None


class SessionExpired(Unauthorized):
    code, message = "session_expired", "Your session has ended; sign in again."
    rfc6750_error = None


class Forbidden(ApiError):
    status, code, message = 403, "forbidden", "Not allowed."


class NoOrgRole(Forbidden):
    code = "no_org_role"

    def __init__(self, org_id: str, required_scope: str | None = None) -> None:
        if required_scope is None:  # signing in: no role at all in the org
            super().__init__(f"You have no admin or viewer role in org {org_id}; ask an admin of the org to give "
                             "you one at the identity provider, or sign in with another account.", org_id=org_id)
            return
        super().__init__(f"You have no role in org {org_id} that allows this ({required_scope}); ask an admin "
                         "of the org at the identity provider.", required_scope=required_scope)


class InsufficientRole(Forbidden):
    """A person with a role in the org, but not one that allows this (a viewer changing a key)."""

    code = "insufficient_role"

    def __init__(self, org_id: str, role: str, required_scope: str) -> None:
        super().__init__(f"Your role in org {org_id} ({role}) does not allow this ({required_scope}); ask an admin "
                         "of the org for the admin role at the identity provider.", role=role,
                         required_scope=required_scope)


class CsrfFailed(Forbidden):
    code = "csrf_failed"
    message = ("A change made with the page's session needs its X-CSRF-Token header, from the page's own "
               "origin; reload the page and try again.")


class InsufficientScope(Forbidden):
    code = "insufficient_scope"

    def __init__(self, required_scope: str) -> None:
        super().__init__(
            f"The API key lacks the scope {required_scope}.", required_scope=required_scope
        )
        self.required_scope = required_scope

    def headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                f'Bearer realm="{REALM}", error="insufficient_scope", '
                f'scope="{self.required_scope}"'
            )
        }


class ScopeNotGrantable(Forbidden):
    code = "scope_not_grantable"
    message = "A key can only grant scopes it holds itself."


class KeyOutlivesCaller(Forbidden):
    code = "key_outlives_caller"
    message = "A key can only roll keys that expire no later than itself."


class LeakHandlingNeedsPerson(Forbidden):
    code = "leak_handling_needs_person"
    message = ("An API key cannot weaken the handling of leaked keys (leak_action flag): a leaked key could "
               "otherwise keep itself alive. An org admin signed in to the page, or an operator, can.")


class LimitsExceedCaller(Forbidden):
    code = "limits_exceed_caller"
    message = "A key can only give keys limits no looser than its own."


class NotFound(ApiError):
    status, code, message = 404, "not_found", "Not found."


class RouteNotFound(NotFound):
    code, message = "route_not_found", "No API route matches this path."


class KeyNotFound(NotFound):
    code, message = "key_not_found", "No such API key in this organization."


class WebhookNotFound(NotFound):
    code, message = "webhook_not_found", "No such webhook endpoint in this organization."


class OrgNotFound(NotFound):
    code, message = "org_not_found", "No such organization, or no access to it."


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"

    def __init__(self, allow: tuple[str, ...]) -> None:
        super().__init__(f"Method not allowed here; allowed: {', '.join(allow)}.")
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allow)}


class KeyLimitReached(ApiError):
    status, code = 409, "key_limit_reached"

    def __init__(self, limit: int) -> None:
        super().__init__(f"This organization has {limit} keys that are not revoked, its limit; "
                         "revoke keys it no longer needs, then create again.", limit=limit)


class WebhookLimitReached(ApiError):
    status, code = 409, "webhook_limit_reached"

    def __init__(self, limit: int) -> None:
        super().__init__(f"This organization has {limit} webhook endpoints, its limit; delete one first.",
                         limit=limit)


class KeyConflict(ApiError):
    status = 409


class KeyIsRevoked(KeyConflict):
    code, message = "api_key_revoked", "The API key is revoked; it cannot be changed or rolled."


class KeyIsExpired(KeyConflict):
    code, message = "api_key_expired", "The API key has expired; it cannot be rolled."


class VersionMismatch(ApiError):
    status, code = 412, "version_mismatch"

    def __init__(self, current: int) -> None:
        super().__init__(f"The key was changed meanwhile (it is at version {current}); read it again, "
                         f'then retry with If-Match: "{current}".', current_version=current)


class PayloadTooLarge(ApiError):
    status, code, message = 413, "payload_too_large", "The request body is too large."


class RequestTimeout(ApiError):
    status, code, message = 408, "request_timeout", "The request body did not arrive in time."


class UriTooLong(ApiError):
    status, code, message = 414, "uri_too_long", "The request target is too long."


class HeadersTooLarge(ApiError):
    status, code, message = 431, "headers_too_large", "The request headers are too large or too many."


class UnsupportedMediaType(ApiError):
    status, code, message = 415, "unsupported_media_type", "Send the body as application/json."


class TooManyFailedAttempts(ApiError):
    status, code = 429, "too_many_failed_attempts"
    message = "Too many failed authentication attempts from this address; retry later."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after


class TooManySignIns(ApiError):
    """Sign-ins started from one client address faster than a person starts them (each holds a
    pending record in Redis until it is used or expires)."""

    status, code = 429, "too_many_sign_ins"

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"Too many sign-ins started from this address ({limit} a minute); retry after {retry_after} s.",
                         limit=limit)
        self.retry_after = retry_after


class TooManyCreates(ApiError):
    status, code = 429, "too_many_creates"

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"This organization may create {limit} keys a minute; retry after {retry_after} s.",
                         limit=limit)
        self.retry_after = retry_after


class TooManyTestSends(ApiError):
    """Test-sends of one webhook endpoint past --webhooks-test-sends a minute (each queues a delivery)."""

    status, code = 429, "too_many_test_sends"

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"This webhook endpoint may be test-sent {limit} times a minute; retry after "
                         f"{retry_after} s.", limit=limit)
        self.retry_after = retry_after


class TooManyReports(ApiError):
    status, code = 429, "too_many_reports"

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"Too many secret-scanning reports from this address ({limit} a minute); retry after "
                         f"{retry_after} s.", limit=limit)
        self.retry_after = retry_after


class LimitExceeded(ApiError):
    """429 of a key over one of its limits (gateway.limiter): the envelope names the window and
    the limit; Retry-After is when that window resets."""

    status = 429

    def __init__(self, window: str, limit: int, retry_after: int, rate_headers: dict[str, str]) -> None:
        super().__init__(self.template.format(limit=limit, window=window, retry_after=retry_after),
                         window=window, limit=limit)
        self.retry_after = retry_after
        self.more_headers = {name: value for name, value in rate_headers.items() if name != "Retry-After"}

    template = "{limit} {window}"


class RateLimited(LimitExceeded):
    code = "rate_limited"
    message = "The API key is over its rate limit; retry later."
    template = "This API key may send {limit} request units per {window}; retry after {retry_after} s."


class QuotaExceeded(LimitExceeded):
    code = "quota_exceeded"
    message = "The API key's quota is used up; retry once it resets."
    template = ("This API key's quota of {limit} request units per {window} (UTC) is used up; it resets in "
                "{retry_after} s.")


class CostOverRate(RateLimited):
    """The route's cost (scopes.yaml) exceeds the key's whole limit: no wait helps (same code)."""

    template = ("This route costs more request units than this API key's limit of {limit} per {window}: "
                "it cannot be admitted under this limit.")


class CostOverQuota(QuotaExceeded):
    template = ("This route costs more request units than this API key's quota of {limit} per {window} "
                "(UTC): it cannot be admitted under this quota.")


class ServiceUnavailable(ApiError):
    status, code, message = 503, "service_unavailable", "Temporarily unavailable."
    retry_after = 1


class AuthUnavailable(ServiceUnavailable):
    code = "auth_unavailable"
    message = "API key verification is temporarily unavailable; retry shortly."


class IdpUnavailable(ServiceUnavailable):
    code = "idp_unavailable"
    message = ("The identity provider's keys cannot be fetched to check this access token; retry shortly "
               "(operator tokens and API keys still work).")


IDP_DOWN_SIGNIN = ("The identity provider cannot be reached, so signing in (or checking your session) is not "
                   "possible right now; retry in a few seconds (operator tokens and API keys still work).")


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"
    message = "The key store is temporarily unavailable; nothing was changed, retry shortly."


class StoreUnconfirmed(StoreUnavailable):
    message = ("The change reached the key store, but no replica confirmed it in time, so it may or may "
               "not last through a failover; retry shortly (repeating a revoke is safe; a key whose "
               "create got this answer was never shown, so it cannot be used).")


class StoreFull(ServiceUnavailable):
    code = "store_full"
    message = ("The key store is nearly full: new keys are refused until an operator frees memory; "
               "revoking keys still works.")
    retry_after = 60


class LimitUnavailable(ServiceUnavailable):
    """503 of a limit whose budget the store cannot lease, under the closed fault policy."""

    def __init__(self, window: str, limit: int, rate_headers: dict[str, str]) -> None:
        super().__init__(window=window, limit=limit)
        self.more_headers = {name: value for name, value in rate_headers.items() if name != "Retry-After"}


class RateLimitUnavailable(LimitUnavailable):
    code = "rate_limit_unavailable"
    message = "The API key's rate limit cannot be checked right now; retry shortly."


class QuotaUnavailable(LimitUnavailable):
    code = "quota_unavailable"
    message = "The API key's quota cannot be checked right now; retry shortly."


class ScannerKeysUnavailable(ServiceUnavailable):
    code = "scanner_keys_unavailable"
    message = ("The secret scanner's public keys cannot be fetched to check this report's signature; nothing was "
               "changed, send it again shortly.")
    retry_after = 5


class UpstreamUnavailable(ApiError):
    status, code, message = 502, "upstream_unavailable", "The upstream service is unavailable."


class UpstreamTimeout(ApiError):
    status, code, message = 504, "upstream_timeout", "The upstream service did not answer in time."


def envelope(err: ApiError, request_id: str) -> dict[str, Any]:
    """The JSON error body shared by the gateway and the admin API."""
    body: dict[str, Any] = {"code": err.code, "message": err.message, "request_id": request_id}
    body.update(err.extra)
    return {"error": body}
