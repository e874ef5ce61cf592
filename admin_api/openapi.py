"""The OpenAPI 3.1 document of the admin API, built from the same Structs that encode responses."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from admin_api import schemas
from gateway.model import KEY_ID_PATTERN, ORG_ID_PATTERN
from gateway.ratelimit import MAX_LIMIT
from gateway.store import AUDIT_CURSOR_PATTERN, CURSOR_PATTERN

REF = "#/components/schemas/{name}"
STATIC_FILES = ("app.js", "session.js", "ui.js", "detail.js", "keyform.js", "reveal.js", "revoke.js", "roll.js", "permissions.js",
                "format.js", "listview.js", "chart.js", "activity.js", "signin.js", "limits.js", "leak.js", "webhooks.js",
                "app.css", "favicon.svg")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


RETRY_AFTER = {"description": "Seconds to wait before trying again", "schema": {"type": "integer", "minimum": 1}}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "RFC 6750: `Bearer realm=\"api\"`, with `error` and "
                                              "`error_description` when a credential was sent",
                               "required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {**RETRY_AFTER, "required": True}},
    503: {"Retry-After": {**RETRY_AFTER, "required": True}},
}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Invalid request (the error names the field), or two different credentials",
        401: "Missing or invalid credential; with the page's session cookie (no Authorization): session_expired",
        403: "The credential lacks the needed scope (insufficient_scope; a person: no_org_role without a role in the org, insufficient_role with one that does not allow it); with the page's "
             "session cookie, a POST, PATCH, PUT or DELETE without its X-CSRF-Token or from another Origin: csrf_failed. "
             "An org key giving a key (create, edit, roll) looser limits than its own: limits_exceed_caller",
        404: "Unknown organization (one without keys) or key",
        408: "The body did not arrive within --body-timeout seconds; the connection is closed",
        409: "key_limit_reached: the org holds as many keys that are not revoked as it may (`limit`); "
             "operators are not held to it. On a roll or edit: api_key_revoked, api_key_expired (roll)",
        412: "version_mismatch: If-Match is not the key's version (`current_version`); read it again",
        413: "Body larger than 64 KiB",
        415: "Body is not application/json",
        429: "Too many failed authentications from this address, or (create, org keys) too_many_creates: the "
             "org's keys created `limit` keys this minute; retry after Retry-After seconds",
        503: "The key store is unavailable; nothing was changed. On a create also store_full: Redis is near "
             "its maxmemory, creates are refused so that revokes still fit. idp_unavailable: the OpenID provider "
             "is needed (a person's access token, or a session due for its refresh) and cannot be reached",
    }
    out = {}
    for status in statuses:
        out[str(status)] = _json("Error", text[status])
        if status in ERROR_HEADERS:
            out[str(status)]["headers"] = ERROR_HEADERS[status]
    return out


HTML_PAGE = {"description": "An HTML page naming the error (sign_in_failed, no_org_role, too_many_failed_attempts, "
                             "too_many_sign_ins, idp_unavailable, store_unavailable)",
             "content": {"text/html": {"schema": {"type": "string"}}}}
HTML_RETRY = {**HTML_PAGE, "headers": {"Retry-After": {**RETRY_AFTER, "required": True}}}
SESSION = {"type": "object", "additionalProperties": False,
           "required": ["actor", "subject", "email", "org_id", "role", "csrf_token", "expires_at", "idle_timeout"],
           "properties": {"actor": {"type": "string"}, "subject": {"type": "string"}, "email": {"type": ["string", "null"]},
                          "org_id": {"type": "string"}, "role": {"enum": ["admin", "viewer"]},
                          "csrf_token": {"type": "string"}, "expires_at": {"type": "string", "format": "date-time"},
                          "idle_timeout": {"type": "integer"}}}


def _list_params(cursor_pattern: str) -> list[dict[str, Any]]:
    """limit and cursor, alike on every paginated list (admin_api.app._list_params checks them)."""
    return [
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
        {"name": "cursor", "in": "query", "required": False,
         # Exactly what the server decodes (tests/unit/test_codec.py), or empty: the first page.
         "schema": {"type": "string", "pattern": f"^(?:{cursor_pattern[1:-1]})?$"},
         "description": "The next_cursor of the previous page (empty: the first page); treat it as opaque"},
    ]


ORG = {"name": "org_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": f"^{ORG_ID_PATTERN}$"}}
KEY = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": f"^{KEY_ID_PATTERN}$"}}
# The create response names the new key: the key's own operations take its id from there.
KEY_LINKS = {
    op: {"operationId": op, "parameters": {"org_id": "$request.path.org_id", "key_id": "$response.body#/id"}}
    for op in ("getApiKey", "getApiKeyUsage", "revokeApiKey", "rollApiKey", "editApiKey")
}
# The new key's own activity log (its create event; its revoke once revoked).
KEY_LINKS["listAuditEvents"] = {"operationId": "listAuditEvents",
                                "parameters": {"org_id": "$request.path.org_id", "query.key_id": "$response.body#/id"}}
# A roll or an edit answers the key: the key's operations follow from it (create -> roll -> edit
# -> revoke, for schemathesis' stateful runs).
CHANGED_LINKS = {
    op: {"operationId": op, "parameters": {"org_id": "$request.path.org_id", "key_id": "$response.body#/id",
                                           **({"header.If-Match": "$response.header.ETag"} if op == "editApiKey" else {})}}
    for op in ("getApiKey", "editApiKey", "rollApiKey", "revokeApiKey")
}
ETAG = {"ETag": {"description": 'The key\'s version, "<version>": send it as If-Match', "schema": {"type": "string"}}}
SECURITY = [{"bearer": []}]
SCAN_REPORT = {"type": "array", "maxItems": 1000, "items": {
    "type": "object", "required": ["token"],
    "properties": {"token": {"type": "string", "minLength": 1, "maxLength": 1024},
                   "type": {"type": "string", "maxLength": 200}, "url": {"type": "string", "maxLength": 4096},
                   "source": {"type": "string", "maxLength": 200}}}}
SCAN_FEEDBACK = {"type": "array", "items": {
    "type": "object", "required": ["token_hash", "token_type", "label"], "additionalProperties": False,
    "properties": {"token_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                                  "description": "SHA-256 (hex) of the reported token"},
                   "token_type": {"type": "string"},
                   "label": {"enum": ["true_positive", "false_positive"],
                             "description": "true_positive: a real key of this gateway, active or not"}}}}
_TIME = {"type": "string", "format": "date-time"}
USAGE_PARAMS = [
    {"name": "from", "in": "query", "required": False, "schema": _TIME,
     "description": "RFC 3339 with a time zone; default: to - 24 h (hour) or to - 30 d (day); must be before to"},
    {"name": "to", "in": "query", "required": False, "schema": _TIME, "description": "RFC 3339; default: now"},
    {"name": "granularity", "in": "query", "required": False, "schema": {"type": "string", "enum": ["hour", "day"]},
     "description": "Default: hour when the range is at most 7 days, else day"},
]
USAGE_DESCRIPTION = (
    "Every request the key authenticated, on the gateway (proxy and forward-auth) and on this API, counted by "
    "the status the client got (2xx, 3xx, 4xx, 5xx: the upstream's, or the gateway's own 502/504) or as "
    "`refused` (the gateway refused it after authenticating the key: 403, 404, 405, 429). In forward-auth mode "
    "an allowed request counts as 2xx (the gateway never sees the upstream's answer). Buckets are aligned to UTC "
    "hours or days and cover from..to; at most 744 hour buckets (31 days) or 1,100 day buckets per query, and "
    "hour buckets only within --usage-hourly-days (default 90), else 400. Counts reach Redis within about "
    "a second (the gateways' flush interval)."
)


@functools.cache
def build_openapi(scopes: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document served at /openapi.json; ``scopes`` is the current catalogue (the create
    body may name only these), so the document follows a reloaded scopes.yaml."""
    from admin_api import webhooks, webhooks_openapi  # they import this module's helpers

    _, components = msgspec.json.schema_components(
        [schemas.Caller, schemas.CreateKeyRequest, schemas.RevokeKeyRequest, schemas.RevokedApiKey,
         schemas.CreatedApiKey, schemas.ApiKey, schemas.KeyDetail, schemas.ApiKeyList,
         schemas.RollKeyRequest, schemas.RolledApiKey, schemas.EditKeyRequest,
         schemas.PermissionList, schemas.AuditEventList, schemas.KeyUsage, schemas.Error,
         schemas.OrgSettingsOut, schemas.OrgSettingsPatch, *webhooks.SCHEMAS],
        ref_template=REF,
    )
    if scopes:
        components["CreateKeyRequest"]["properties"]["scopes"]["items"]["enum"] = list(scopes)
        components["EditKeyRequest"]["properties"]["scopes"]["items"]["enum"] = list(scopes)
    # At least one field, and expires_in and expires_at not together (admin_api.app.edit_key).
    components["EditKeyRequest"].update(minProperties=1, not_={"required": ["expires_in", "expires_at"]})
    components["EditKeyRequest"]["not"] = components["EditKeyRequest"].pop("not_")
    # A limit is an integer (5.0 is one too, as JSON Schema counts; schemas.LimitSpec).
    components["LimitSpec"]["properties"]["limit"] = {
        "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "description": "Request units per window"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "API key admin API",
            "version": "1.0.0",
            "description": (
                "Create, list, roll, edit and revoke an organization's API keys. Authenticate with "
                "`Authorization: Bearer <operator token>` (any org) or an API key of the org holding "
                "`api_keys:read` (read) or `api_keys:manage` (create and revoke; implies read), or, with "
                "`--oidc-issuer`, a person's access token (JWT) from the OpenID provider: its admin role "
                "manages the org's keys, its viewer role reads them (docs/admin-api.md#people-openid-connect). "
                "A key created by an org key records it in `created_by` (`key:<id>`) and cannot outlive it: "
                "an `expires_in` later than the creator's own expiry (or `never`) is refused with a 400 on "
                "`expires_in` naming `max_expires_at`; operators' keys are not capped. Revoking a key leaves "
                "the keys it created active, unless `cascade` is asked: then they are revoked too, "
                "recursively. Org keys are held to a per-org key limit (409 `key_limit_reached`) and create "
                "rate (429 `too_many_creates`); every create is refused with 503 `store_full` while Redis is "
                "near its maxmemory. With `--oidc-client-id` people also sign in to the page (/auth/*): the session "
                "cookie then authenticates /v1 requests that carry no Authorization header, and their POST, PATCH, "
                "PUT and DELETE need `X-CSRF-Token` (docs/admin-api.md#signing-in)."
            ),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": SECURITY,
        "paths": {
            "/v1/me": {"get": {
                "operationId": "whoami",
                "summary": "The caller behind the credential",
                "description": "Any valid credential may call this; it needs no scope.",
                "responses": {"200": _json("Caller", "The caller"), **_errors(400, 401, 429, 503)},
            }},
            "/v1/permissions": {"get": {
                "operationId": "listPermissions",
                "summary": "The permission catalogue",
                "parameters": [{"name": "q", "in": "query", "required": False, "schema": {"type": "string"},
                                "description": "Case-insensitive search in scope and label"}],
                "responses": {"200": _json("PermissionList", "Permissions in catalogue order"), **_errors(400, 401, 403, 429, 503)},
            }},
            "/v1/orgs/{org_id}/api-keys": {
                "parameters": [ORG],
                "post": {
                    "operationId": "createApiKey",
                    "summary": "Create a key (the secret is returned once)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("CreateKeyRequest")}}},
                    "responses": {
                        "201": {**_json("CreatedApiKey", "Created; `key` is the secret, shown only here"),
                                "headers": {"Location": {"schema": {"type": "string"}}}, "links": KEY_LINKS},
                        **_errors(400, 401, 403, 404, 408, 409, 413, 415, 429, 503),
                    },
                },
                "get": {
                    "operationId": "listApiKeys",
                    "summary": "List keys, newest first",
                    "parameters": [
                        {"name": "include_revoked", "in": "query", "required": False, "schema": {"type": "boolean", "default": False}},
                        *_list_params(CURSOR_PATTERN),
                    ],
                    "responses": {"200": _json("ApiKeyList", "A page of keys"), **_errors(400, 401, 403, 404, 429, 503)},
                },
            },
            "/v1/orgs/{org_id}/api-keys/{key_id}": {
                "parameters": [ORG, KEY],
                "get": {
                    "operationId": "getApiKey",
                    "summary": "One key (never the secret)",
                    "responses": {"200": {**_json("KeyDetail", "The key, and how much of its limits the current "
                                                                "windows have used"), "headers": ETAG},
                                  **_errors(400, 401, 403, 404, 429, 503)},
                },
                "patch": {
                    "operationId": "editApiKey",
                    "summary": "Change a key's name, scopes, expiry or limits",
                    "description": "expires_in is counted from now; expires_at may only make the expiry earlier. "
                                   "limits replaces the key's own limits (null: the configured default applies); "
                                   "a lower limit, like a removed scope, is enforced by every gateway by the answer. "
                                   "An org key may add only scopes it holds. A removed scope (or an earlier expiry) "
                                   "is refused by every gateway by the time of the answer; an added one applies "
                                   "from the next request. Applies to every live secret of the key.",
                    "parameters": [{"name": "If-Match", "in": "header", "required": False,
                                    "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
                                    "description": 'The ETag of the key as read ("<version>"): 412 if it changed'}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("EditKeyRequest")}}},
                    "responses": {"200": {**_json("ApiKey", "The key as changed"), "headers": ETAG,
                                          "links": CHANGED_LINKS},
                                  **_errors(400, 401, 403, 404, 408, 409, 412, 413, 415, 429, 503)},
                },
            },
            "/v1/orgs/{org_id}/api-keys/{key_id}/roll": {
                "parameters": [ORG, KEY],
                "post": {
                    "operationId": "rollApiKey",
                    "summary": "Give a key a new secret (returned once); the current one works for the grace period",
                    "description": "The key keeps its id, name, scopes, expiry and usage. The previous secret answers "
                                   "401 rolled_api_key once the grace period is over (never later than the key's "
                                   "expiry); with `now`, every gateway refuses it by the time of the answer. A secret "
                                   "still in an earlier roll's grace period stops at once. An org key may roll only "
                                   "a key whose scopes it holds (403 scope_not_grantable) and that expires no later "
                                   "than itself (403 key_outlives_caller).",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("RollKeyRequest")}}},
                    "responses": {"200": {**_json("RolledApiKey", "Rolled; `key` is the new secret, shown only here"),
                                          "headers": ETAG, "links": CHANGED_LINKS},
                                  **_errors(400, 401, 403, 404, 408, 409, 413, 415, 429, 503)},
                },
            },
            "/v1/orgs/{org_id}/api-keys/{key_id}/usage": {
                "parameters": [ORG, KEY],
                "get": {
                    "operationId": "getApiKeyUsage",
                    "summary": "A key's requests per UTC hour or day, by outcome class",
                    "description": USAGE_DESCRIPTION,
                    "parameters": USAGE_PARAMS,
                    "responses": {"200": _json("KeyUsage", "Contiguous buckets, zeros included, and the totals"),
                                  **_errors(400, 401, 403, 404, 429, 503)},
                },
            },
            "/v1/orgs/{org_id}/api-keys/{key_id}/revoke": {
                "parameters": [ORG, KEY],
                "post": {
                    "operationId": "revokeApiKey",
                    "summary": "Revoke a key (with cascade, also every key it created); idempotent and effective immediately",
                    "description": "Answered once every gateway refuses the key, and with cascade every key it "
                                   "created, recursively. Without cascade those keys stay active. cascade may be "
                                   "given in the query, the body or both: either one true means cascade.",
                    "parameters": [{"name": "cascade", "in": "query", "required": False,
                                    "schema": {"type": "boolean", "default": False},
                                    "description": "Also revoke every key this key created, recursively"}],
                    "requestBody": {"required": False,
                                    "content": {"application/json": {"schema": _ref("RevokeKeyRequest")}}},
                    "responses": {"200": _json("RevokedApiKey", "The revoked key, and the ids this call revoked"),
                                  **_errors(400, 401, 403, 404, 413, 415, 429, 503)},
                },
            },
            "/v1/orgs/{org_id}/audit-events": {
                "parameters": [ORG],
                "get": {
                    "operationId": "listAuditEvents",
                    "summary": "The org's activity log (creates, edits, rolls, revokes), newest first",
                    "description": "Every change of the org's keys with its actor, time and what changed "
                                   "(before/after; never a secret), as far back as it goes. With key_id, that "
                                   "key's events only (404 key_not_found unless it is a key of the org); a "
                                   "cursor pages on within the same key_id.",
                    "parameters": [
                        {"name": "key_id", "in": "query", "required": False,
                         "schema": {"type": "string", "pattern": f"^(?:{KEY_ID_PATTERN})?$"},
                         "description": "Only this key's events (empty: the whole org)"},
                        *_list_params(AUDIT_CURSOR_PATTERN),
                    ],
                    "responses": {"200": _json("AuditEventList", "A page of events"), **_errors(400, 401, 403, 404, 429, 503)},
                },
            },
            "/v1/orgs/{org_id}/settings": {
                "parameters": [ORG],
                "get": {
                    "operationId": "getOrgSettings",
                    "summary": "The org's settings about its keys (leak_action, unused_days, expire_unused_days)",
                    "responses": {"200": _json("OrgSettingsOut", "The settings (the defaults until changed)"),
                                  **_errors(401, 403, 404, 429, 503)},
                },
                "patch": {
                    "operationId": "editOrgSettings",
                    "summary": "Change some of the org's settings (api_keys:manage; setting leak_action to flag takes a person or an operator: 403 leak_handling_needs_person for a key)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("OrgSettingsPatch")}}},
                    "responses": {"200": _json("OrgSettingsOut", "The settings now"),
                                  **_errors(400, 401, 403, 404, 408, 413, 415, 429, 503)},
                },
            },
            "/v1/secret-scanning/github": {"post": {
                "operationId": "secretScanningReport",
                "summary": "GitHub's secret-scanning partner report: revoke (or flag) the keys it found public",
                "description": "Public: authenticated by the ECDSA P-256 / SHA-256 signature over the raw body "
                               "(Github-Public-Key-Signature, base64 DER) with the key Github-Public-Key-Identifier "
                               "names among those --secret-scanning-keys-url publishes. At most 1 MiB and 1,000 "
                               "tokens. See docs/secret-scanning.md.",
                "security": [],
                "parameters": [{"name": n, "in": "header", "required": True, "schema": {"type": "string"}}
                               for n in ("Github-Public-Key-Identifier", "Github-Public-Key-Signature")],
                "requestBody": {"required": True, "content": {"application/json": {"schema": SCAN_REPORT}}},
                "responses": {
                    "200": {"description": "One label per reported token, in order",
                            "content": {"application/json": {"schema": SCAN_FEEDBACK}}},
                    "400": _json("Error", "invalid_report: signed, but not an array of at most 1,000 {token, type, url, source}"),
                    "401": {**_json("Error", "missing_signature or invalid_signature: nothing was changed"),
                            "headers": {"WWW-Authenticate": {"description": 'Github-Public-Key-Signature realm="api"',
                                                             "required": True, "schema": {"type": "string"}}}},
                    "404": _json("Error", "Secret-scanning reports are off (--secret-scanning-keys-url is empty)"),
                    "408": _json("Error", "The body did not arrive within --body-timeout seconds"),
                    "413": _json("Error", "Body larger than 1 MiB"),
                    "415": _json("Error", "Body is not application/json"),
                    "429": {**_json("Error", "too_many_reports: --secret-scanning-rate reports a minute from this address"),
                            "headers": ERROR_HEADERS[429]},
                    "503": {**_json("Error", "scanner_keys_unavailable (the public keys cannot be fetched) or "
                                             "store_unavailable: nothing was changed, send it again"),
                            "headers": ERROR_HEADERS[503]},
                },
            }},
            **webhooks_openapi.paths(),
            "/": {"get": {
                "operationId": "apiKeysPage",
                "summary": "The Settings -> API Keys web page (sign in with the same credentials)",
                "security": [],
                "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }},
            "/static/{file}": {"get": {
                "operationId": "pageAsset",
                "summary": "The page's scripts, style sheet and icon",
                "security": [],
                "parameters": [{"name": "file", "in": "path", "required": True,
                                "schema": {"type": "string", "enum": list(STATIC_FILES)}}],
                "responses": {
                    "200": {"description": "The file", "content": {
                        "text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}},
                        "image/svg+xml": {"schema": {"type": "string"}}}},
                    "404": _json("Error", "No such file"),
                },
            }},
            "/favicon.ico": {"get": {
                "operationId": "favicon",
                "summary": "The page's icon (the SVG of /static/favicon.svg), for clients that ask for this path",
                "security": [],
                "responses": {"200": {"description": "SVG icon", "content": {"image/svg+xml": {"schema": {"type": "string"}}}}},
            }},
            "/auth/config": {"get": {
                "operationId": "signInConfig",
                "summary": "Whether the page offers sign-in with the OpenID provider",
                "security": [],
                "responses": {"200": {"description": "Sign-in on or off", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["sign_in", "issuer"], "additionalProperties": False,
                    "properties": {"sign_in": {"type": "boolean"}, "issuer": {"type": ["string", "null"]}}}}}}},
            }},
            "/auth/login": {"get": {
                "operationId": "signInStart",
                "summary": "Start a sign-in: 302 to the provider (state, nonce, PKCE S256), with the login cookie",
                "security": [],
                "parameters": [{"name": "return_to", "in": "query", "required": False, "schema": {"type": "string"},
                                "description": "A local path to return to (anything else: /)"}],
                "responses": {"302": {"description": "To the provider's authorization endpoint",
                                      "headers": {"Location": {"required": True, "schema": {"type": "string"}}}},
                              "404": _json("Error", "Page sign-in is not configured"),
                              "429": HTML_RETRY, "503": HTML_RETRY},
            }},
            "/auth/callback": {"get": {
                "operationId": "signInCallback",
                "summary": "The provider's redirect: the code redeemed, the ID token checked, the session created",
                "security": [],
                "parameters": [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                               for n in ("code", "state", "error", "error_description")],
                "responses": {"303": {"description": "Signed in: to return_to, with the session cookie",
                                      "headers": {"Location": {"required": True, "schema": {"type": "string"}}}},
                              "400": HTML_PAGE, "403": HTML_PAGE, "404": _json("Error", "Page sign-in is not configured"),
                              "429": HTML_RETRY, "503": HTML_RETRY},
            }},
            "/auth/session": {"get": {
                "operationId": "signInSession",
                "summary": "The signed-in person (session cookie), the CSRF token and when the session ends",
                "security": [],
                "responses": {"200": {"description": "The session", "content": {"application/json": {"schema": SESSION}}},
                              **_errors(401, 403), "404": _json("Error", "Page sign-in is not configured"),
                              **_errors(503)},
            }},
            "/auth/logout": {"post": {
                "operationId": "signOut",
                "summary": "End the session (cookie + X-CSRF-Token); the provider's end-session URL, if any",
                "security": [],
                "responses": {"200": {"description": "Signed out", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["end_session_url"], "additionalProperties": False,
                    "properties": {"end_session_url": {"type": ["string", "null"]}}}}}},
                              **_errors(403), "404": _json("Error", "Page sign-in is not configured"), **_errors(503)},
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
    }
