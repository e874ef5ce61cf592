"""Header hygiene: spoofed identity, credentials, Connection tricks, forwarding and responses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.headers import (
    CREDENTIAL_HEADERS,
    FORWARDING_HEADERS,
    HOP_BY_HOP,
    IDENTITY_HEADERS,
    METHOD_OVERRIDE_HEADERS,
    ClientInfo,
    Identity,
    connection_tokens,
    fold_name,
    override_kind,
    upstream_request_headers,
    upstream_response_headers,
)

RID = "req_0123456789abcdef01234567"
IDENTITY = Identity(org_id="org_good", key_id="key_good", scopes=("tasks:read", "tasks:write"))
UNTRUSTED = ClientInfo(peer="203.0.113.9", proto="https", host="api.example.com", trusted_proxy=False)
TRUSTED = ClientInfo(peer="10.0.0.2", proto="http", host="internal.example", trusted_proxy=True)
INJECTED = {
    "x-request-id": RID,
    "x-org-id": "org_good",
    "x-api-key-id": "key_good",
    "x-api-key-scopes": "tasks:read tasks:write",
}


def build(headers, *, identity=IDENTITY, client=UNTRUSTED):
    return upstream_request_headers(headers, identity=identity, request_id=RID, client=client)


def values(headers, name):
    """Every value of headers whose folded name is ``name``."""
    return [v for n, v in headers if fold_name(n) == name]


def assert_injected_once(out, identity=IDENTITY):
    expected = dict(INJECTED) if identity is not None else {"x-request-id": RID}
    for name, value in expected.items():
        assert values(out, name) == [value], name
    if identity is None:
        for name in ("x-org-id", "x-api-key-id", "x-api-key-scopes"):
            assert values(out, name) == []


def spellings(name: str) -> dict[str, str]:
    parts = name.split("-")
    return {
        "lower": name,
        "upper": name.upper(),
        "title": "-".join(p.capitalize() for p in parts),
        "mixed": "".join(c.upper() if i % 2 else c for i, c in enumerate(name)),
        "underscores": "_".join(p.capitalize() for p in parts),
        "one-underscore": name[::-1].replace("-", "_", 1)[::-1],
        "spaces": f"  {name.title()} ",
        "tab": f"\t{name}",
    }


SPOOF_CASES = [
    pytest.param(spelled, id=f"{name}-{style}")
    for name in sorted(IDENTITY_HEADERS)
    for style, spelled in spellings(name).items()
]


@pytest.mark.parametrize("spelled", SPOOF_CASES)
@pytest.mark.parametrize("copies", [1, 3], ids=["once", "thrice"])
@pytest.mark.parametrize("identity", [IDENTITY, None], ids=["authenticated", "public"])
def test_identity_spoof_never_survives(spelled, copies, identity):
    client = [("Accept", "application/json")] + [(spelled, "org_evil")] * copies + [("X-Trace", "t1")]
    out = build(client, identity=identity)
    assert all(v != "org_evil" for _, v in out)
    assert_injected_once(out, identity)
    assert out[0] == ("Accept", "application/json")
    assert ("X-Trace", "t1") in out


def test_spoof_examples_from_the_brief():
    client = [("X_Org_Id", "evil"), ("x-org_id", "evil"), ("X-ORG-ID", "evil"), ("x-org-id", "evil"),
              ("X-Org-Id", "evil"), (" X-Org-Id ", "evil"), ("X-Api-Key-Scopes", "admin"),
              ("X-API-KEY-SCOPES", "admin"), ("x_api_key_scopes", "admin"), ("X-Request-Id", "mine")]
    out = build(client)
    assert out == [
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api.example.com"),
        ("X-Request-Id", RID),
        ("X-Org-Id", "org_good"),
        ("X-Api-Key-Id", "key_good"),
        ("X-Api-Key-Scopes", "tasks:read tasks:write"),
    ]


@pytest.mark.parametrize(
    "name",
    ["X-Api-Key-Scopes-Extra", "X-API-KEY-SCOPES2", "X-Api-Keys", "x-api-key_id", "X_Api_Key_Anything",
     "X-Org-Name", "X-Org-Id-Override", "x_org_role", "X-Gateway-Verified", "X-Gateway-Signature-Extra",
     "X-Forwarded-Server", "X-Forwarded-Prefix", "x_forwarded_for", "X-Forwarded-Ssl"],
)
def test_prefix_families_are_dropped(name):
    out = build([(name, "spoof")])
    assert all(v != "spoof" for _, v in out)


@pytest.mark.parametrize(
    "name",
    ["X-Organisation", "X-Apikey", "X-Api", "X-Request-Id-Client", "X-Orgid", "Gateway-Id", "X-Real-IP-Hint"],
)
def test_lookalikes_outside_the_families_are_kept(name):
    out = build([(name, "v")])
    assert (name, "v") in out


@pytest.mark.parametrize(
    "name",
    ["Authorization", "authorization", "AUTHORIZATION", "X-API-Key", "x-api-key", "X-Api-Key", "x_api_key",
     "X_API_KEY", " Authorization", "Proxy-Authorization", "proxy_authorization"],
)
def test_credentials_are_removed(name):
    out = build([(name, "Bearer sk_live_secret"), (name, "sk_live_secret")])
    assert all("secret" not in v for _, v in out)
    assert_injected_once(out)


def test_all_named_sets_are_dropped():
    names = CREDENTIAL_HEADERS | IDENTITY_HEADERS | METHOD_OVERRIDE_HEADERS | HOP_BY_HOP | FORWARDING_HEADERS
    out = build([(n, "client") for n in sorted(names)] + [("Host", "client")])
    assert all(v != "client" for _, v in out)


@pytest.mark.parametrize(
    "name",
    ["X-HTTP-Method-Override", "x-http-method-override", "X_HTTP_Method_Override", "X-HTTP-Method",
     "x-http-method", "X-Method-Override", "X_METHOD_OVERRIDE"],
)
def test_method_override_headers_removed(name):
    out = build([(name, "DELETE"), ("Accept", "*/*")])
    assert all(v != "DELETE" for _, v in out)
    assert ("Accept", "*/*") in out


@pytest.mark.parametrize(
    "name",
    ["X-Original-URL", "X-Original-Uri", "X-Rewrite-URL", "X-Override-URL", "X-Forwarded-Path",
     "X-Forwarded-Prefix", "X-Forwarded-Uri", "X-Envoy-Original-Path", "X-HTTP-Destinationurl", "X-Proxy-Url",
     "Base-Url", "base_url", "Request-Uri", "X_ORIGINAL_URL", "x-original-path", "X-Rewrite-Path",
     "X-Script-Prefix", "X-Real-Path", "X-Envoy-Original-Url", " X-Original-URL", "X-Custom-Base-Uri"],
)
def test_path_override_headers_removed(name):
    out = build([(name, "/v1/guests"), ("Accept", "*/*")])
    assert all(v != "/v1/guests" for _, v in out)
    assert ("Accept", "*/*") in out


@pytest.mark.parametrize("name", ["X-Urgent", "X-Pathogen", "X-Prefixes", "Url-Type", "X-Trace", "Accept"])
def test_names_that_only_look_like_path_overrides_pass(name):
    out = build([(name, "kept")])
    assert (name, "kept") in out


@pytest.mark.parametrize(
    "name",
    ["X-Host", "x_host", "X-HTTP-Host-Override", "X-Original-Host", "X-Forwarded-Server", "X-Forwarded-Scheme",
     "X-Url-Scheme", "X_Url_Scheme", "Front-End-Https", "front_end_https", "Forwarded", "X-ForwardedHost",
     "X-Scheme", "X-Original-Proto", "X-Original-Port", "X-Https", "X-Ssl", "X-Proxy-Host", "X-Forwarded_Proto"],
)
def test_host_override_headers_removed(name):
    out = build([(name, "evil.example"), ("Accept", "*/*")])
    assert all(v != "evil.example" for _, v in out)
    assert ("Accept", "*/*") in out
    assert override_kind(fold_name(name)) == "host"


@pytest.mark.parametrize("name", ["X-Hostile", "X-Report-To", "X-Support-Id", "X-Ports-Enabled", "Host-Note",
                                  "X-Servers-Seen", "Accept", "X-Protobuf-Version"])
def test_names_that_only_look_like_host_overrides_pass(name):
    out = build([(name, "kept")])
    assert (name, "kept") in out
    assert override_kind(fold_name(name)) is None


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_removed(name):
    out = build([(name, "x"), (name.upper(), "y"), ("Accept", "*/*")])
    assert all(fold_name(n) not in HOP_BY_HOP for n, _ in out)
    assert ("Accept", "*/*") in out


def test_host_and_content_length_removed():
    # The forwarder frames the body itself: a client's length next to it would make two.
    out = build([("Host", "evil.example"), ("Content-Length", "12"), ("Content-Type", "text/plain")])
    assert values(out, "host") == [] and values(out, "content-length") == []
    assert ("Content-Type", "text/plain") in out


@pytest.mark.parametrize("name", ["Content-Length", "Content_Length", "content_length", "CONTENT_LENGTH"])
def test_no_spelling_of_content_length_is_passed_on(name):
    # A backend folding "_" to "-" would see two lengths: request smuggling on a pooled connection.
    out = build([("Content-Length", "5"), (name, "500")])
    assert [n for n, _ in out if fold_name(n) == "content-length"] == []


@pytest.mark.parametrize("name", ["Expect", "expect", "EXPECT"])
def test_expect_is_answered_by_the_gateway_not_passed_on(name):
    out = build([(name, "100-continue"), ("Accept", "*/*")])
    assert values(out, "expect") == [] and ("Accept", "*/*") in out


@pytest.mark.parametrize("value", ["caf\udce9", "\udcff\udcfe", "ok \udc80 ok"])
def test_values_with_undecodable_bytes_are_dropped(value):
    # aiohttp's parser turns non-UTF-8 header bytes into lone surrogates (surrogateescape).
    out = build([("X-Note", value), ("X-Fine", "caf\u00e9")])
    assert values(out, "x-note") == [] and ("X-Fine", "caf\u00e9") in out
    for _, v in out:
        v.encode("utf-8")  # every forwarded value can be written as it is


# --- Connection -----------------------------------------------------------------------------------


def test_connection_cannot_remove_injected_headers():
    client = [("Connection", "X-Org-Id, keep-alive"), ("Keep-Alive", "timeout=5"), ("X-Org-Id", "evil")]
    out = build(client)
    assert_injected_once(out)
    assert values(out, "connection") == [] and values(out, "keep-alive") == []


@pytest.mark.parametrize(
    "listed",
    ["X-Request-Id", "x-api-key-scopes, x-api-key-id", "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host"],
)
def test_connection_listing_gateway_headers_changes_nothing(listed):
    out = build([("Connection", listed)])
    assert_injected_once(out)
    assert values(out, "x-forwarded-for") == ["203.0.113.9"]
    assert values(out, "x-forwarded-proto") == ["https"]
    assert values(out, "x-forwarded-host") == ["api.example.com"]


@pytest.mark.parametrize("listed", ["x-custom", "X-Custom", " x-custom ,", "close, X_CUSTOM", "x-other, x-custom"])
def test_connection_removes_named_client_header(listed):
    client = [("X-Custom", "a"), ("x_custom", "b"), ("Connection", listed), ("X-Kept", "c")]
    out = build(client)
    assert values(out, "x-custom") == []
    assert ("X-Kept", "c") in out


def test_connection_listed_after_the_header_it_names_still_applies():
    out = build([("X-Custom", "a"), ("Connection", "keep-alive"), ("Connection", "x-custom")])
    assert values(out, "x-custom") == []


def test_connection_tokens():
    headers = [("Connection", "Keep-Alive, X_Custom"), ("connection", " ,close,, "), ("CONNECTION", "Upgrade"),
               ("X-Other", "x-not-a-token")]
    assert connection_tokens(headers) == frozenset({"keep-alive", "x-custom", "close", "upgrade"})
    assert connection_tokens([]) == frozenset()


# --- forwarding headers -----------------------------------------------------------------------------

FORWARDING_SPOOF = [
    ("X-Forwarded-For", "1.1.1.1"),
    ("X-Forwarded-For", "2.2.2.2"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "spoofed.example"),
    ("X-Forwarded-Port", "8443"),
    ("Forwarded", "for=1.1.1.1;proto=https"),
    ("X-Real-IP", "1.1.1.1"),
]


def test_untrusted_peer_forwarding_headers_are_replaced():
    client = ClientInfo(peer="203.0.113.9", proto="http", host="api.example.com", trusted_proxy=False)
    out = build(FORWARDING_SPOOF, client=client)
    assert values(out, "x-forwarded-for") == ["203.0.113.9"]
    assert values(out, "x-forwarded-proto") == ["http"]
    assert values(out, "x-forwarded-host") == ["api.example.com"]
    for name in ("x-forwarded-port", "forwarded", "x-real-ip"):
        assert values(out, name) == []


def test_trusted_peer_forwarding_headers_are_appended():
    out = build(FORWARDING_SPOOF, client=TRUSTED)
    assert values(out, "x-forwarded-for") == ["1.1.1.1, 2.2.2.2, 10.0.0.2"]
    assert values(out, "x-forwarded-proto") == ["https"]
    assert values(out, "x-forwarded-host") == ["spoofed.example"]
    for name in ("x-forwarded-port", "forwarded", "x-real-ip"):
        assert values(out, name) == []


def test_trusted_peer_without_forwarding_headers_uses_the_connection():
    out = build([("Accept", "*/*")], client=TRUSTED)
    assert values(out, "x-forwarded-for") == ["10.0.0.2"]
    assert values(out, "x-forwarded-proto") == ["http"]
    assert values(out, "x-forwarded-host") == ["internal.example"]


def test_trusted_peer_underscore_spelling_is_not_part_of_the_chain():
    client = [("X-Forwarded-For", "198.51.100.7"), ("X_Forwarded_For", "6.6.6.6"), ("x_forwarded_proto", "https")]
    out = build(client, client=TRUSTED)
    assert values(out, "x-forwarded-for") == ["198.51.100.7, 10.0.0.2"]
    assert values(out, "x-forwarded-proto") == ["http"]


def test_trusted_peer_blank_or_broken_values_are_ignored():
    client = [("X-Forwarded-For", "  "), ("X-Forwarded-For", "6.6.6.6\r\nX-Org-Id: evil"),
              ("X-Forwarded-Host", "")]
    out = build(client, client=TRUSTED)
    assert values(out, "x-forwarded-for") == ["10.0.0.2"]
    assert values(out, "x-forwarded-host") == ["internal.example"]


def test_no_host_omits_x_forwarded_host():
    client = ClientInfo(peer="203.0.113.9", proto="http", host=None, trusted_proxy=False)
    out = build([("X-Forwarded-Host", "spoofed.example")], client=client)
    assert values(out, "x-forwarded-host") == []


def test_no_peer_omits_x_forwarded_for():
    client = ClientInfo(peer="", proto="http", host=None, trusted_proxy=False)
    out = build([("X-Forwarded-For", "1.1.1.1")], client=client)
    assert values(out, "x-forwarded-for") == []


# --- CR / LF / NUL and malformed names -----------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\r\nX-Org-Id: evil", "a\x00b", "\n", "\x00"],
                         ids=["cr", "lf", "crlf-injection", "nul", "only-lf", "only-nul"])
def test_values_with_cr_lf_nul_are_dropped(bad):
    out = build([("X-Custom", bad), ("Accept", "*/*"), ("Content-Type", bad)])
    assert values(out, "x-custom") == [] and values(out, "content-type") == []
    assert ("Accept", "*/*") in out
    assert all("\r" not in v and "\n" not in v and "\x00" not in v for _, v in out)
    assert_injected_once(out)


def test_host_with_crlf_is_not_forwarded():
    client = ClientInfo(peer="203.0.113.9", proto="http", host="a\r\nX-Org-Id: evil", trusted_proxy=False)
    out = build([], client=client)
    assert values(out, "x-forwarded-host") == []
    assert_injected_once(out)


@pytest.mark.parametrize("name", ["", "Bad Name", "X-A:b", "X-A\r\nX-Org-Id", "caf\u00e9", "X-A\x00"])
def test_invalid_names_are_dropped(name):
    out = build([(name, "v"), ("Accept", "*/*")])
    assert all(n != name for n, _ in out)
    assert ("Accept", "*/*") in out


def test_other_headers_keep_order_case_and_repeats():
    client = [("Accept", "a"), ("X-Custom", "1"), ("cookie", "c=1"), ("X-Custom", "2"), ("User-Agent", "ua")]
    out = build(client)
    assert out[:5] == client


def test_injected_headers_come_last_in_order():
    out = build([("Accept", "*/*")])
    assert [n for n, _ in out[-4:]] == ["X-Request-Id", "X-Org-Id", "X-Api-Key-Id", "X-Api-Key-Scopes"]
    assert out[-1] == ("X-Api-Key-Scopes", "tasks:read tasks:write")


def test_scopes_keep_given_order_and_empty_scopes_give_empty_value():
    out = build([], identity=Identity("o", "k", ("z", "a", "m")))
    assert values(out, "x-api-key-scopes") == ["z a m"]
    out = build([], identity=Identity("o", "k", ()))
    assert values(out, "x-api-key-scopes") == [""]


def test_public_route_injects_only_request_id():
    out = build([("X-Org-Id", "evil")], identity=None)
    assert_injected_once(out, None)
    assert out[-1] == ("X-Request-Id", RID)


@pytest.mark.parametrize(
    "identity",
    [Identity("org\r\nX-Admin: 1", "k", ()), Identity("o", "k\x00", ()), Identity("o", "k", ("a b",)),
     Identity("o", "k", ("",)), Identity("o", "k", ("a\tb",))],
    ids=["org-crlf", "key-nul", "scope-space", "scope-empty", "scope-tab"],
)
def test_unsafe_injected_values_fail_closed(identity):
    with pytest.raises(ValueError):
        build([], identity=identity)


def test_unsafe_request_id_fails_closed():
    with pytest.raises(ValueError):
        upstream_request_headers([], identity=None, request_id="r\n", client=UNTRUSTED)


def test_accepts_any_iterable_of_pairs():
    out = upstream_request_headers(iter([("Accept", "*/*"), ("Connection", "accept")]), identity=None,
                                   request_id=RID, client=UNTRUSTED)
    assert values(out, "accept") == []


@pytest.mark.parametrize(
    ("name", "folded"),
    [("X-Org-Id", "x-org-id"), ("X_ORG_ID", "x-org-id"), ("  x_Org-id\t", "x-org-id"), ("Host", "host")],
)
def test_fold_name(name, folded):
    assert fold_name(name) == folded


_identity_names = sorted(IDENTITY_HEADERS | CREDENTIAL_HEADERS | {"x-forwarded-for", "forwarded", "x-real-ip"})


@st.composite
def _spoofed_name(draw):
    name = draw(st.sampled_from(_identity_names))
    chars = [draw(st.sampled_from([c.lower(), c.upper()])) if c != "-" else draw(st.sampled_from("-_"))
             for c in name]
    return draw(st.sampled_from(["", " ", "\t"])) + "".join(chars) + draw(st.sampled_from(["", " "]))


_client_headers = st.lists(
    st.one_of(
        st.tuples(_spoofed_name(), st.sampled_from(["evil", "Bearer sk_evil"])),
        st.tuples(st.sampled_from(["Accept", "Connection", "X-Custom"]), st.sampled_from(["fine", "x-org-id, x-custom"])),
    ),
    max_size=12,
)


@given(_client_headers, st.booleans())
@settings(max_examples=300)
def test_property_no_client_identity_survives(client, trusted):
    info = ClientInfo(peer="192.0.2.1", proto="https", host=None, trusted_proxy=trusted)
    out = build(client, client=info)
    assert_injected_once(out)
    assert values(out, "forwarded") == [] and values(out, "x-real-ip") == []
    if not trusted:
        assert values(out, "x-forwarded-for") == ["192.0.2.1"]
    for name, value in out:
        folded = fold_name(name)
        assert folded not in CREDENTIAL_HEADERS and folded != "connection"
        if folded in IDENTITY_HEADERS:
            assert value == INJECTED[folded]
        elif folded != "x-forwarded-for":
            assert value not in ("evil", "Bearer sk_evil")


# --- responses ---------------------------------------------------------------------------------------


def response(headers):
    """upstream_response_headers takes and gives raw bytes pairs; these tests read as text."""
    raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in upstream_response_headers(raw, request_id=RID)]


def test_response_drops_hop_by_hop_and_sets_request_id():
    upstream = [("Content-Type", "application/json"), ("Connection", "keep-alive, X-Internal"),
                ("Keep-Alive", "timeout=5"), ("X-Internal", "secret"), ("Upgrade", "h2c"),
                ("Proxy-Authenticate", "Basic"), ("Trailer", "X-Sum"), ("TE", "trailers"),
                ("X-Request-Id", "upstream-id"), ("x_request_id", "other"), ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"), ("Content-Length", "42")]
    assert response(upstream) == [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "42"),
        ("X-Request-Id", RID),
    ]


@pytest.mark.parametrize("te_name", ["Transfer-Encoding", "transfer-encoding", "TRANSFER-ENCODING"])
def test_response_content_length_dropped_only_with_transfer_encoding(te_name):
    out = response([("Content-Length", "10"), (te_name, "chunked"), ("ETag", '"x"')])
    assert out == [("ETag", '"x"'), ("X-Request-Id", RID)]


def test_response_content_length_kept_without_transfer_encoding():
    assert response([("content-length", "0")]) == [("content-length", "0"), ("X-Request-Id", RID)]


def test_response_only_request_id_when_empty():
    assert response([]) == [("X-Request-Id", RID)]


def test_response_connection_cannot_remove_request_id():
    out = response([("Connection", "X-Request-Id"), ("X-Request-Id", "u")])
    assert out == [("X-Request-Id", RID)]


def test_response_values_with_cr_lf_nul_are_dropped():
    out = response([("Location", "/x\r\nSet-Cookie: evil=1"), ("X-A", "a\x00"), ("X-B", "ok")])
    assert out == [("X-B", "ok"), ("X-Request-Id", RID)]


def test_response_unsafe_request_id_fails_closed():
    with pytest.raises(ValueError):
        upstream_response_headers([], request_id="r\r\n")
