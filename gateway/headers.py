"""Header hygiene for the forwarded request and the returned response (pure; no I/O).

Headers are sequences of (name, value) str pairs, possibly repeated, in any case.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable, NamedTuple

CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key"})
IDENTITY_HEADERS = frozenset({
    "x-org-id", "x-api-key-id", "x-api-key-scopes", "x-request-id",
    "x-gateway-signature", "x-gateway-signature-key-id", "x-gateway-timestamp",
})
METHOD_OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# Redone by the gateway for its own hop: its server has answered "Expect: 100-continue" already
# (passed on, the upstream client would wait for a second 100 that a backend may never send),
# and the forwarder frames the body itself (its own Content-Length, or chunked).
REFRAMED_HEADERS = frozenset({"expect", "content-length"})
FORWARDING_HEADERS = frozenset({
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-real-ip", "forwarded",
})
# SECURITY: whole families are dropped by prefix, so spoof variants such as
# "X-Api-Key-Scopes-Extra" or "X-Org-Name" never reach a backend that matches loosely.
DROPPED_PREFIXES = ("x-forwarded-", "x-api-key", "x-org-", "x-gateway-")
# SECURITY: path-override channels. Frameworks and proxies read a URL, URI, path or prefix from
# headers such as X-Original-URL, X-Rewrite-URL, X-Envoy-Original-Path or X-Forwarded-Prefix
# and serve that instead of the authorized path. Dropped by rule: any x-* name ending in one of
# these (X-HTTP-Destinationurl included), and the ones named below.
PATH_OVERRIDE_SUFFIXES = ("url", "uri", "path", "prefix")
PATH_OVERRIDE_HEADERS = frozenset({"base-url", "base-uri", "request-uri", "original-url", "original-uri"})
# SECURITY: host- and scheme-override channels. Frameworks and proxies read the host, scheme or
# port a request was "really" for from headers such as X-Forwarded-Host, X-Host,
# X-HTTP-Host-Override, X-Original-Host, X-Forwarded-Server, X-Url-Scheme, Front-End-Https or
# Forwarded, and build redirects, absolute links or virtual-host routing from them. The gateway is
# the edge, so a client's values are never believed. Dropped by rule: any x-* name with one of
# these words (split on "-"), or ending in one of the suffixes (X-ForwardedHost, X-UrlScheme),
# and the ones named below.
HOST_OVERRIDE_WORDS = frozenset({"host", "hostname", "server", "scheme", "proto", "protocol", "port", "https", "ssl"})
HOST_OVERRIDE_SUFFIXES = ("host", "scheme", "proto", "https")
HOST_OVERRIDE_HEADERS = frozenset({"forwarded", "front-end-https"})

# RFC 9110 token: the only valid field-name characters.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BREAKS_FIELD = re.compile(r"[\r\n\x00]")
# The above, or header bytes that were not UTF-8 (decoded by gateway/httprequest.py as lone
# surrogates, which could not be sent back as they came).
_UNSENDABLE_VALUE = re.compile("[\r\n\x00\ud800-\udfff]")
_WHITESPACE = re.compile(r"\s")

Headers = Iterable[tuple[str, str]]


class Identity(NamedTuple):
    """The verified caller, injected for the backend."""

    org_id: str
    key_id: str
    scopes: tuple[str, ...]
    # Its three headers, checked once (identity_of); computed per call when left empty.
    lines: tuple[tuple[str, str], ...] = ()


def identity_of(org_id: str, key_id: str, scopes: tuple[str, ...]) -> Identity:
    """An Identity with its headers checked and rendered once (raises ValueError if unsafe)."""
    identity = Identity(org_id, key_id, scopes)
    return identity._replace(lines=_identity_values(identity))


class ClientInfo(NamedTuple):
    """The connection the request came on: socket peer IP, "http"/"https", its Host header."""

    peer: str
    proto: str
    host: str | None
    trusted_proxy: bool


@functools.lru_cache(maxsize=4096)  # names repeat from request to request; bounded for hostile ones
def fold_name(name: str) -> str:
    """Normalize a header name for comparison: strip, lower-case, "_" -> "-"."""
    # SECURITY: CGI/WSGI-style backends map both "X-Org-Id" and "X_Org_Id" to HTTP_X_ORG_ID,
    # so both spellings must be treated as the same header here.
    return name.strip().lower().replace("_", "-")


@functools.lru_cache(maxsize=4096)
def override_kind(folded: str) -> str | None:
    """"method", "path" or "host" when a folded header name is a method-, path- or host-override
    channel (host: the host, scheme or port the request claims to be for)."""
    if folded in METHOD_OVERRIDE_HEADERS:
        return "method"
    x_name = folded.startswith("x-")
    if folded in PATH_OVERRIDE_HEADERS or (x_name and folded.endswith(PATH_OVERRIDE_SUFFIXES)):
        return "path"
    if folded in HOST_OVERRIDE_HEADERS or (x_name and (
            folded.endswith(HOST_OVERRIDE_SUFFIXES) or not HOST_OVERRIDE_WORDS.isdisjoint(folded.split("-")))):
        return "host"
    return None


def override_header(headers: Headers, exempt: frozenset[str] = frozenset()) -> str | None:
    """The kind of the first override header among ``headers`` ("method", "path" or "host"), or None.

    For forward-auth mode, where the edge forwards the client's headers itself and the gateway
    cannot drop them: it refuses the request instead. ``exempt``: the edge's own protocol
    headers (lower case, exact spelling: X-Original-URI of nginx, X-Forwarded-Uri of Traefik), and
    the ones the edge itself replaces on the request it forwards (nginx's X-Forwarded-Host, ...).
    """
    for name, _ in headers:
        if name.lower() in exempt:
            continue
        kind = override_kind(fold_name(name))
        if kind is not None:
            return kind
    return None


def connection_tokens(headers: Headers) -> frozenset[str]:
    """Folded names listed in every ``Connection`` header (comma separated)."""
    tokens: set[str] = set()
    for name, value in headers:
        if fold_name(name) == "connection":
            tokens.update(fold_name(tok) for tok in value.split(","))
    tokens.discard("")
    return frozenset(tokens)


def _forwardable(name: str, value: str) -> bool:
    # SECURITY: a CR, LF or NUL in a value (or a name that is not a token) could split or
    # truncate the header block on the way out; the HTTP parser normally refuses these
    # earlier, this is defence in depth. The header is dropped, never repaired.
    # A value holding non-UTF-8 bytes cannot be written back as it came either (the upstream
    # request head is encoded as UTF-8).
    return _is_token(name) and _UNSENDABLE_VALUE.search(value) is None


@functools.lru_cache(maxsize=4096)
def _is_token(name: str) -> bool:
    return _TOKEN.fullmatch(name) is not None


@functools.lru_cache(maxsize=4096)
def _always_refused(name: str) -> bool:
    """A request header never forwarded whatever its value: a dropped name, or not a token."""
    return not _is_token(name) or _always_dropped(fold_name(name))


@functools.lru_cache(maxsize=4096)
def _always_dropped(folded: str) -> bool:
    return (
        folded in CREDENTIAL_HEADERS
        # SECURITY: every spelling of Content-Length, "_" ones included: next to the forwarder's
        # own length, a backend would see two (a desync on the pooled upstream connection).
        or folded in REFRAMED_HEADERS
        or folded in IDENTITY_HEADERS
        or override_kind(folded) is not None  # method-, path- and host-override channels
        or folded in HOP_BY_HOP
        or folded in FORWARDING_HEADERS
        or folded == "host"
        or folded.startswith(DROPPED_PREFIXES)
    )


def _trusted_value(headers: list[tuple[str, str]], name: str) -> str | None:
    """The comma-joined values of header ``name`` (exact spelling, any case), or None."""
    # SECURITY: only the real hyphenated name counts, not "_" variants: a trusted proxy may
    # pass a client's "X_Forwarded_For" through after its own X-Forwarded-For, and taking it
    # would let the client choose the right-most (most trusted) hop.
    values = [v.strip() for n, v in headers if n.lower() == name and _forwardable(n, v)]
    joined = ", ".join(v for v in values if v)
    return joined or None


def _injected(name: str, value: str) -> tuple[str, str]:
    # SECURITY: gateway-made values are never dropped silently (a backend would then see a
    # request without identity); a bad one is a bug or corrupt data, so fail closed.
    if _BREAKS_FIELD.search(value):
        raise ValueError(f"refusing to inject {name}: value contains CR, LF or NUL")
    return name, value


def upstream_request_headers(
    client_headers: Headers, *, identity: Identity | None, request_id: str, client: ClientInfo
) -> list[tuple[str, str]]:
    """The headers to send upstream: the client's, cleaned, then forwarding and identity headers.

    Drops every copy of credential, identity, method-, path- and host-override, hop-by-hop,
    Connection-listed, Host, Expect, Content-Length and forwarding headers (and the x-api-key*,
    x-org-*, x-gateway-*, x-forwarded-* families, and x-* names ending in url, uri, path or
    prefix), and headers that cannot be sent as they came;
    then sets X-Forwarded-For/-Proto/-Host and injects X-Request-Id and, with an identity,
    X-Org-Id, X-Api-Key-Id and X-Api-Key-Scopes, one copy each, last.
    Raises ValueError if an injected identity value or request id is not a safe header value.
    """
    headers = client_headers if isinstance(client_headers, list) else list(client_headers)
    # Collected before anything is removed, and applied to client headers only: injected
    # headers are added afterwards, so "Connection: X-Org-Id" cannot remove them.
    listed = connection_tokens(headers)
    out = [
        (name, value)
        for name, value in headers
        if not _always_refused(name) and (not listed or fold_name(name) not in listed)
        and _UNSENDABLE_VALUE.search(value) is None
    ]

    # SECURITY: the client's X-Forwarded-* are believed only from a trusted proxy; otherwise
    # they are replaced by what this connection shows.
    trusted_for = _trusted_value(headers, "x-forwarded-for") if client.trusted_proxy else None
    trusted_proto = _trusted_value(headers, "x-forwarded-proto") if client.trusted_proxy else None
    trusted_host = _trusted_value(headers, "x-forwarded-host") if client.trusted_proxy else None
    hops = [h for h in (trusted_for, client.peer) if h]
    if hops:
        forwarded_for = ", ".join(hops)
        if _forwardable("X-Forwarded-For", forwarded_for):
            out.append(("X-Forwarded-For", forwarded_for))
    proto = trusted_proto or client.proto
    if proto and _forwardable("X-Forwarded-Proto", proto):
        out.append(("X-Forwarded-Proto", proto))
    host = trusted_host or client.host
    if host is not None and _forwardable("X-Forwarded-Host", host):
        out.append(("X-Forwarded-Host", host))

    out.extend(identity_headers(identity, request_id))
    return out


def identity_headers(identity: Identity | None, request_id: str) -> list[tuple[str, str]]:
    """X-Request-Id and, with an identity, X-Org-Id, X-Api-Key-Id and X-Api-Key-Scopes.

    The headers the gateway vouches for: injected upstream by the proxy, answered to the edge
    by forward-auth. Raises ValueError if a value is not a safe header value.
    """
    out = [_injected("X-Request-Id", request_id)]
    if identity is not None:
        out.extend(identity.lines or _identity_values(identity))
    return out


def _identity_values(identity: Identity) -> tuple[tuple[str, str], ...]:
    for scope in identity.scopes:
        # SECURITY: scopes travel space-separated; a scope holding whitespace (or an empty
        # one) would read as different scopes on the backend.
        if not scope or _WHITESPACE.search(scope):
            raise ValueError("refusing to inject X-Api-Key-Scopes: a scope is empty or has whitespace")
    return (
        _injected("X-Org-Id", identity.org_id),
        _injected("X-Api-Key-Id", identity.key_id),
        _injected("X-Api-Key-Scopes", " ".join(identity.scopes)),
    )


@functools.lru_cache(maxsize=4096)
def _response_name(name: bytes) -> str | None:
    """The folded name of a response header, or None when the name is not a token."""
    text = name.decode("latin-1")
    return fold_name(text) if _is_token(text) else None


_UNSENDABLE_BYTES = re.compile(rb"[\r\n\x00]")


def upstream_response_headers(upstream_headers: list[tuple[bytes, bytes]], *,
                              request_id: str) -> list[tuple[bytes, bytes]]:
    """The upstream response headers (raw bytes, as parsed) to return, plus one ``X-Request-Id``.

    Drops hop-by-hop and Connection-listed headers, any upstream X-Request-Id, and
    Content-Length when Transfer-Encoding is present (kept otherwise). Values pass as bytes,
    unchanged (no re-encoding of what the upstream sent).
    """
    names = tuple([name for name, _ in upstream_headers])
    listed = tuple([upstream_headers[i][1] for i in _connection_positions(names)])
    out = [upstream_headers[i] for i in _response_plan(names, listed)]
    # (one search over all values; "\t" cannot be a match, nor join two values into one)
    if _UNSENDABLE_BYTES.search(b"\t".join([value for _, value in out])) is not None:
        out = [(name, value) for name, value in out if _UNSENDABLE_BYTES.search(value) is None]
    out.append((b"X-Request-Id", _injected("X-Request-Id", request_id)[1].encode()))
    return out


@functools.lru_cache(maxsize=1024)  # an upstream answers with a few header-name sequences
def _connection_positions(names: tuple[bytes, ...]) -> tuple[int, ...]:
    return tuple(i for i, name in enumerate(names) if _response_name(name) == "connection")


@functools.lru_cache(maxsize=1024)
def _response_plan(names: tuple[bytes, ...], connection_values: tuple[bytes, ...]) -> tuple[int, ...]:
    """Which of the upstream's headers (by position) pass, given their names and Connection values."""
    listed = connection_tokens(("Connection", value.decode("latin-1")) for value in connection_values)
    folded = [_response_name(name) for name in names]
    # SECURITY: both framing headers together is the request-smuggling shape; the body is
    # re-framed by our server, so the stale length must not be passed on.
    chunked = "transfer-encoding" in folded
    keep = []
    for i, fname in enumerate(folded):
        if fname is None or fname in HOP_BY_HOP or fname == "x-request-id" or fname in listed:
            continue
        if chunked and fname == "content-length":
            continue
        keep.append(i)
    return tuple(keep)
