"""Forward-auth mode: answer "may this request pass?" for nginx, Traefik and Envoy.

The edge (nginx `auth_request`, Traefik `ForwardAuth`, Envoy `ext_authz` HTTP service) asks
before it forwards a request itself. The answer runs the proxy's own steps 1-5 (`decide`):
200 with the identity headers for the edge to copy upstream, or the usual JSON error.
"""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple

from gateway import errors
from gateway.credentials import key_in_path
from gateway.headers import identity_headers, override_header
from gateway.paths import NotCanonical, canonicalize
from gateway.httpserver import HttpConnection, HttpRequest
from gateway.decision import GatewayState, decide
from gateway.envelope import error_body, error_headers, request_handler
from gateway.signing import KEY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

# The headers a 200 carries, for the edge to set on the forwarded request (deploy/ lists them).
IDENTITY_RESPONSE_HEADERS = ("X-Org-Id", "X-Api-Key-Id", "X-Api-Key-Scopes", "X-Request-Id")
SIGNATURE_RESPONSE_HEADERS = (SIGNATURE_HEADER, KEY_ID_HEADER, TIMESTAMP_HEADER)
# nginx's auth_request drops the body of a refusal, and turns any status but 401/403 into a
# 500: the JSON error travels in this header too, so nginx can answer it as is (deploy/nginx).
ERROR_HEADER = "X-Gateway-Error"
ENVOY_PREFIX = "/envoy"  # the ext_authz http_service path_prefix (deploy/envoy/envoy.yaml)

NGINX_HEADERS = ("x-original-method", "x-original-uri")
TRAEFIK_HEADERS = ("x-forwarded-method", "x-forwarded-uri")
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
# Each edge's own headers, which name the original request rather than override it.
EDGE_HEADERS = {"nginx": frozenset(NGINX_HEADERS), "traefik": frozenset(TRAEFIK_HEADERS), "envoy": frozenset()}


class Original(NamedTuple):
    """The request the edge asks about: which edge, its method, its raw request target."""

    edge: str  # "nginx", "traefik" or "envoy"
    method: str
    target: str


def original_request(method: str, raw_target: str, headers: Iterable[tuple[str, str]]) -> Original:
    """Read the original method and target from the check request of nginx, Traefik or Envoy.

    ``method`` and ``raw_target`` are the check request's own; ``headers`` its (name, value) pairs.
    Raises MissingOriginalRequest when none or half of one convention is present,
    AmbiguousOriginalRequest for several (or a repeated header), InvalidOriginalMethod for a bad method.
    """
    seen: dict[str, list[str]] = {name: [] for name in NGINX_HEADERS + TRAEFIK_HEADERS}
    for name, value in headers:
        found = seen.get(name.lower())
        if found is not None:
            found.append(value)
    if any(len(values) > 1 for values in seen.values()):
        raise errors.AmbiguousOriginalRequest("An X-Original-* or X-Forwarded-Method/-Uri header is repeated.")
    envoy = raw_target.startswith(ENVOY_PREFIX + "/")
    nginx = any(seen[name] for name in NGINX_HEADERS)
    traefik = any(seen[name] for name in TRAEFIK_HEADERS)
    # SECURITY: exactly one convention. With two, a header the client sent (and a misconfigured
    # edge passed on) could choose what gets authorized instead of what gets forwarded.
    if envoy + nginx + traefik > 1:
        raise errors.AmbiguousOriginalRequest("The check request mixes the nginx, Traefik and Envoy conventions.")
    if envoy:
        original = Original("envoy", method, raw_target[len(ENVOY_PREFIX):])
    elif nginx or traefik:
        method_header, uri_header = NGINX_HEADERS if nginx else TRAEFIK_HEADERS
        if not seen[method_header] or not seen[uri_header]:
            raise errors.MissingOriginalRequest()
        original = Original("nginx" if nginx else "traefik", seen[method_header][0], seen[uri_header][0])
    else:
        raise errors.MissingOriginalRequest()
    if not _METHOD.fullmatch(original.method):
        raise errors.InvalidOriginalMethod()
    return original


def require_canonical(raw_target: str) -> None:
    """Refuse a target that is not already in canonical form (400 invalid_path).

    SECURITY: the edge forwards the raw target, not our canonical form. `/v1/%74asks` would be
    authorized as /v1/tasks but reach the backend as it was sent, so only targets that are
    their own canonical form can be authorized: exactly what the edge will forward.
    """
    try:
        target = canonicalize(raw_target)
    except NotCanonical:
        raise errors.InvalidPath() from None
    # A key in the path gets its own answer here too, whatever spelling the edge sent.
    if key_in_path(target.path):
        raise errors.KeyInPath()
    if target.path + ("?" + target.query if target.query else "") != raw_target:
        raise errors.InvalidPath()


async def _answer(st: GatewayState, req: HttpRequest, conn: HttpConnection, request_id: str,
                  entry: dict) -> tuple[int, str]:
    """May the request the edge describes pass? 200 with identity headers (or an ApiError)."""
    original = original_request(req.method, req.target, req.headers)
    method, raw_target = original.method, original.target
    entry["method"] = method
    require_canonical(raw_target)
    # SECURITY: the edge forwards the client's headers itself, so a method- or path-override
    # header would reach the backend next to what was authorized: refuse it (the proxy drops them).
    overridden = override_header(req.headers, EDGE_HEADERS[original.edge])
    if overridden is not None:
        raise errors.MethodOverrideRefused() if overridden == "method" else errors.PathOverrideRefused()
    # Steps 1-5, as in the proxy. The throttle's client address is the edge's
    # X-Forwarded-For only when the edge is in --trusted-proxies.
    target, identity = await decide(st, method, raw_target, req.headers, req.peer, entry)
    headers = [("Cache-Control", "no-store"), *identity_headers(identity, request_id)]
    if st.signer is not None:
        headers += st.signer.headers(now=st.clock(), method=method, path=target.path, query=target.query,
                                     identity=identity, request_id=request_id)
    conn.respond(200, "", headers, b"")
    return 200, "ok"


def _refuse(conn: HttpConnection, err: errors.ApiError, request_id: str, req: HttpRequest) -> None:
    """The JSON error; for nginx (which drops a refusal's body) in ERROR_HEADER too."""
    headers = error_headers(err, request_id)
    body = error_body(err, request_id)
    if req.header("x-original-uri") is not None:
        headers.append((ERROR_HEADER, body.decode()))
    conn.respond(err.status, "", headers, body)


# check(st, req, conn): may the request the edge describes pass? 200 with identity headers, or the JSON error.
check = request_handler(_answer, _refuse)
