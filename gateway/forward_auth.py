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
from gateway.decision import GatewayState, decide, rate_headers
from gateway.envelope import error_body, error_headers, request_handler
from gateway.signing import KEY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

# The headers a 200 carries, for the edge to set on the forwarded request (deploy/ lists them).
IDENTITY_RESPONSE_HEADERS = ("X-Org-Id", "X-Api-Key-Id", "X-Api-Key-Scopes", "X-Request-Id")
# A limited key's 200 (and 429) carries these too, for the edge to set on its answer to the client.
RATE_RESPONSE_HEADERS = ("RateLimit-Policy", "RateLimit")
SIGNATURE_RESPONSE_HEADERS = (SIGNATURE_HEADER, KEY_ID_HEADER, TIMESTAMP_HEADER)
# nginx's auth_request drops the body of a refusal, and turns any status but 401/403 into a
# 500: the JSON error travels in this header too, so nginx can answer it as is (deploy/nginx).
ERROR_HEADER = "X-Gateway-Error"
ENVOY_PREFIX = "/envoy"  # the ext_authz http_service path_prefix (deploy/envoy/envoy.yaml)
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token


class Edge(NamedTuple):
    """How one edge names the original request in its check request: a row of EDGES."""

    name: str
    method_header: str | None = None  # lower case; None: the check request's own method
    target_header: str | None = None  # lower case; None: the check request's target after path_prefix
    path_prefix: str | None = None  # the check request's path starts with this + "/"
    error_header: bool = False  # also send the JSON error in ERROR_HEADER (the edge drops the body)
    # The host and scheme headers the edge sets itself on the request it forwards, replacing the
    # client's copies (in exactly this spelling). Every other host-override header would reach
    # the backend as sent.
    replaced: frozenset[str] = frozenset()

    @property
    def own_headers(self) -> frozenset[str]:
        """The edge's own headers, which name the original request rather than override it."""
        return frozenset(h for h in (self.method_header, self.target_header) if h is not None)

    @property
    def exempt_headers(self) -> frozenset[str]:
        """Override-looking headers that are the edge's own: the naming ones and the replaced ones."""
        return self.own_headers | self.replaced


# One row per edge (docs/forward-auth.md has the same table); a new edge is a new row. Replaced
# headers: deploy/nginx's proxy_set_header lines, Traefik's forwarded headers (a client outside
# forwardedHeaders.trustedIPs), Envoy's x-forwarded-proto (use_remote_address).
EDGES = (
    Edge("nginx", "x-original-method", "x-original-uri", error_header=True,
         replaced=frozenset({"x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "forwarded"})),
    Edge("traefik", "x-forwarded-method", "x-forwarded-uri",
         replaced=frozenset({"x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-forwarded-server"})),
    Edge("envoy", path_prefix=ENVOY_PREFIX, replaced=frozenset({"x-forwarded-proto"})),
)
# Every header that names an original request, of any edge.
NAMING_HEADERS = tuple(h for edge in EDGES for h in (edge.method_header, edge.target_header) if h is not None)
_OVERRIDE_REFUSALS = {"method": errors.MethodOverrideRefused, "path": errors.PathOverrideRefused,
                      "host": errors.HostOverrideRefused}


class Original(NamedTuple):
    """The request the edge asks about: which edge, its method, its raw request target."""

    edge: Edge
    method: str
    target: str


def _names_one(edge: Edge, raw_target: str, seen: dict[str, list[str]]) -> bool:
    """Does the check request carry any sign of ``edge``'s convention?"""
    if edge.path_prefix is not None and raw_target.startswith(edge.path_prefix + "/"):
        return True
    return any(seen[h] for h in edge.own_headers)


def original_request(method: str, raw_target: str, headers: Iterable[tuple[str, str]]) -> Original:
    """Read the original method and target from the check request of one of EDGES.

    ``method`` and ``raw_target`` are the check request's own; ``headers`` its (name, value) pairs.
    Raises MissingOriginalRequest when none or half of one convention is present,
    AmbiguousOriginalRequest for several (or a repeated header), InvalidOriginalMethod for a bad method.
    """
    seen: dict[str, list[str]] = {name: [] for edge in EDGES for name in edge.own_headers}
    for name, value in headers:
        found = seen.get(name.lower())
        if found is not None:
            found.append(value)
    if any(len(values) > 1 for values in seen.values()):
        raise errors.AmbiguousOriginalRequest("An X-Original-* or X-Forwarded-Method/-Uri header is repeated.")
    present = [edge for edge in EDGES if _names_one(edge, raw_target, seen)]
    # SECURITY: exactly one convention. With two, a header the client sent (and a misconfigured
    # edge passed on) could choose what gets authorized instead of what gets forwarded.
    if len(present) > 1:
        raise errors.AmbiguousOriginalRequest("The check request mixes the nginx, Traefik and Envoy conventions.")
    if not present:
        raise errors.MissingOriginalRequest()
    edge = present[0]
    if any(not seen[h] for h in edge.own_headers):
        raise errors.MissingOriginalRequest()  # half of it
    if edge.path_prefix is not None and not raw_target.startswith(edge.path_prefix + "/"):
        raise errors.MissingOriginalRequest()
    original = Original(
        edge,
        seen[edge.method_header][0] if edge.method_header else method,
        seen[edge.target_header][0] if edge.target_header else raw_target[len(edge.path_prefix or ""):],
    )
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
    # SECURITY: the edge forwards the client's headers itself, so a method-, path- or
    # host-override header would reach the backend next to what was authorized: refuse it
    # (the proxy drops them).
    overridden = override_header(req.headers, original.edge.exempt_headers)
    if overridden is not None:
        raise _OVERRIDE_REFUSALS[overridden]()
    # Steps 1-5, as in the proxy. The throttle's client address is the edge's
    # X-Forwarded-For only when the edge is in --trusted-proxies.
    target, identity, limited = await decide(st, method, raw_target, req.headers, req.peer, entry)
    headers = [("Cache-Control", "no-store"), *identity_headers(identity, request_id)]
    if limited is not None:  # for the edge to copy onto its answer (docs/forward-auth.md)
        headers += rate_headers(st, limited).items()
    if st.signer is not None:
        headers += st.signer.headers(now=st.clock(), method=method, path=target.path, query=target.query,
                                     identity=identity, request_id=request_id)
    conn.respond(200, "", headers, b"")
    return 200, "ok"


def _refuse(conn: HttpConnection, err: errors.ApiError, request_id: str, req: HttpRequest) -> None:
    """The JSON error; for an edge that drops a refusal's body (nginx) in ERROR_HEADER too."""
    headers = error_headers(err, request_id)
    body = error_body(err, request_id)
    # (asked for by the edge's target header: the one nginx always sends)
    if any(edge.error_header and edge.target_header and req.header(edge.target_header) is not None
           for edge in EDGES):
        headers.append((ERROR_HEADER, body.decode()))
    conn.respond(err.status, "", headers, body)


# check(st, req, conn): may the request the edge describes pass? 200 with identity headers, or the JSON error.
check = request_handler(_answer, _refuse)
