"""Signed identity headers: known answers, tampering, freshness, rotation, and the two canonical builders."""

from __future__ import annotations

import ast
import sys

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

import gateway_verify
from gateway import signing
from gateway.config import ConfigError, ServeSettings, load
from gateway.headers import ClientInfo, Identity, fold_name, upstream_request_headers
from gateway_verify import (
    BadSignature,
    ExpiredSignature,
    FutureSignature,
    MalformedSignature,
    MissingSignature,
    SignatureError,
    UnknownKeyId,
    verify_request,
)
from tests.support import ROOT

OLD = "old-secret-0123456789abcdefghijklmnopqrstu"
NEW = "new-secret-0123456789abcdefghijklmnopqrstu"
SECRETS = {"2025-01": OLD}
NOW = 1_735_689_600
RID = "req_0123456789abcdef01234567"
IDENTITY = Identity("acme", "key_0123456789ABCDEF", ("tasks:read", "tasks:write"))
TARGET = "/v1/tasks/42?expand=owner&limit=10"

# The test vector of docs/signing.md: any implementation must reproduce these bytes.
VECTOR_SECRET = "test-vector-secret-0123456789abcdefghij"
VECTOR_CANONICAL = (
    "v1\n2025-01\n1735689600\nGET\n/v1/tasks/42?expand=owner&limit=10\nacme\nkey_0123456789ABCDEF\n"
    "tasks:read tasks:write\nreq_0123456789abcdef01234567"
)
VECTOR_SIGNATURE = "v1=e26882869530666a5ad5ca23c2ad791d4cf4947b0d920710a8ffcccca6fa71fa"
PUBLIC_CANONICAL = "v1\n2025-01\n1735689600\nGET\n/v1/status\n\n\n\nreq_fedcba9876543210fedcba98"
PUBLIC_SIGNATURE = "v1=614bd7621ad370fe51800edf403f7661250046f00f826ac7e86703393d4151d1"


def signed(*, kid="2025-01", secret=OLD, method="GET", target=TARGET, identity=IDENTITY, request_id=RID,
           now=NOW) -> list[tuple[str, str]]:
    """What the gateway injects: the identity headers, then the three signature headers."""
    headers = [("X-Request-Id", request_id)]
    if identity is not None:
        headers += [("X-Org-Id", identity.org_id), ("X-Api-Key-Id", identity.key_id),
                    ("X-Api-Key-Scopes", " ".join(identity.scopes))]
    path, _, query = target.partition("?")
    signer = signing.Signer(signing.SigningSecret(kid, secret.encode()))
    return headers + signer.headers(now=now, method=method, path=path, query=query, identity=identity,
                                    request_id=request_id)


def replace(headers, name, value):
    """``headers`` with every ``name`` header set to ``value`` (None: removed)."""
    out = [(n, v) for n, v in headers if fold_name(n) != name.lower()]
    return out if value is None else out + [(name, value)]


# --- known answers -----------------------------------------------------------------------------


def test_known_answer_vector():
    secret = signing.SigningSecret("2025-01", VECTOR_SECRET.encode())
    fields = dict(timestamp=1735689600, method="GET", target="/v1/tasks/42?expand=owner&limit=10",
                  org_id="acme", key_id="key_0123456789ABCDEF", scopes="tasks:read tasks:write",
                  request_id="req_0123456789abcdef01234567")
    assert signing.canonical_string(kid="2025-01", **fields) == VECTOR_CANONICAL
    assert gateway_verify.canonical_string(kid="2025-01", **fields) == VECTOR_CANONICAL
    assert signing.sign(secret, **fields) == [
        ("X-Gateway-Signature", VECTOR_SIGNATURE),
        ("X-Gateway-Signature-Key-Id", "2025-01"),
        ("X-Gateway-Timestamp", "1735689600"),
    ]
    headers = {
        "X-Gateway-Signature": VECTOR_SIGNATURE, "X-Gateway-Signature-Key-Id": "2025-01",
        "X-Gateway-Timestamp": "1735689600", "X-Org-Id": "acme", "X-Api-Key-Id": "key_0123456789ABCDEF",
        "X-Api-Key-Scopes": "tasks:read tasks:write", "X-Request-Id": "req_0123456789abcdef01234567",
    }
    identity = verify_request("GET", "/v1/tasks/42?expand=owner&limit=10", headers,
                              {"2025-01": VECTOR_SECRET}, now=1735689600)
    assert identity == gateway_verify.Identity(
        "acme", "key_0123456789ABCDEF", ("tasks:read", "tasks:write"), "req_0123456789abcdef01234567")
    assert identity.authenticated


def test_known_answer_vector_public_route():
    secret = signing.SigningSecret("2025-01", VECTOR_SECRET.encode())
    signer = signing.Signer(secret)
    headers = signer.headers(now=1735689600.9, method="GET", path="/v1/status", query="", identity=None,
                             request_id="req_fedcba9876543210fedcba98")
    assert headers[0] == ("X-Gateway-Signature", PUBLIC_SIGNATURE)
    assert headers[2] == ("X-Gateway-Timestamp", "1735689600")  # whole seconds, rounded down
    identity = verify_request("GET", "/v1/status", headers + [("X-Request-Id", "req_fedcba9876543210fedcba98")],
                              f"2025-01:{VECTOR_SECRET}", now=1735689600)
    assert (identity.org_id, identity.key_id, identity.scopes) == ("", "", ())
    assert not identity.authenticated
    assert signing.canonical_string(
        kid="2025-01", timestamp=1735689600, method="GET", target="/v1/status", org_id="", key_id="",
        scopes="", request_id="req_fedcba9876543210fedcba98") == PUBLIC_CANONICAL


def test_signing_doc_carries_the_test_vector():
    doc = (ROOT / "docs" / "signing.md").read_text()
    for text in (VECTOR_SECRET, VECTOR_SIGNATURE, PUBLIC_SIGNATURE, *VECTOR_CANONICAL.split("\n")):
        assert text in doc, text


# --- verification --------------------------------------------------------------------------------


def test_round_trip_returns_the_identity():
    identity = verify_request("GET", TARGET, signed(), SECRETS, now=NOW)
    assert identity == gateway_verify.Identity(IDENTITY.org_id, IDENTITY.key_id, IDENTITY.scopes, RID)


TAMPERED = {
    "method": lambda h: ("POST", TARGET, h),
    "method case": lambda h: ("get", TARGET, h),
    "path": lambda h: ("GET", "/v1/tasks/43?expand=owner&limit=10", h),
    "path encoding": lambda h: ("GET", "/v1/tasks/%34%32?expand=owner&limit=10", h),
    "query changed": lambda h: ("GET", "/v1/tasks/42?expand=owner&limit=11", h),
    "query dropped": lambda h: ("GET", "/v1/tasks/42", h),
    "query added": lambda h: ("GET", TARGET + "&admin=1", h),
    "org": lambda h: ("GET", TARGET, replace(h, "X-Org-Id", "other-org")),
    "org removed": lambda h: ("GET", TARGET, replace(h, "X-Org-Id", None)),
    "key id": lambda h: ("GET", TARGET, replace(h, "X-Api-Key-Id", "key_AAAAAAAAAAAAAAAA")),
    "scopes added": lambda h: ("GET", TARGET, replace(h, "X-Api-Key-Scopes", "tasks:read tasks:write files:read")),
    "scopes reordered": lambda h: ("GET", TARGET, replace(h, "X-Api-Key-Scopes", "tasks:write tasks:read")),
    "scopes removed": lambda h: ("GET", TARGET, replace(h, "X-Api-Key-Scopes", None)),
    "request id": lambda h: ("GET", TARGET, replace(h, "X-Request-Id", "req_ffffffffffffffffffffffff")),
    "timestamp": lambda h: ("GET", TARGET, replace(h, "X-Gateway-Timestamp", str(NOW + 1))),
    "signature": lambda h: ("GET", TARGET, replace(
        h, "X-Gateway-Signature", "v1=" + "0" * 64)),
    "signature one digit": lambda h: ("GET", TARGET, replace(
        h, "X-Gateway-Signature", _flip_last(dict(h)["X-Gateway-Signature"]))),
    # Another key id the verifier accepts: the HMAC is then computed with the wrong secret.
    "signing key id": lambda h: ("GET", TARGET, replace(h, "X-Gateway-Signature-Key-Id", "2025-07")),
}


def _flip_last(sig: str) -> str:
    return sig[:-1] + ("0" if sig[-1] != "0" else "1")


@pytest.mark.parametrize("change", TAMPERED.values(), ids=TAMPERED.keys())
def test_tampering_with_any_field_fails(change):
    method, target, headers = change(signed())
    with pytest.raises(BadSignature):
        verify_request(method, target, headers, {"2025-01": OLD, "2025-07": NEW}, now=NOW)


def test_public_route_signature_cannot_be_upgraded_with_an_identity():
    headers = signed(identity=None, target="/v1/status")
    assert verify_request("GET", "/v1/status", headers, SECRETS, now=NOW).key_id == ""
    forged = headers + [("X-Org-Id", "acme"), ("X-Api-Key-Id", "key_0123456789ABCDEF"),
                        ("X-Api-Key-Scopes", "tasks:write")]
    with pytest.raises(BadSignature):
        verify_request("GET", "/v1/status", forged, SECRETS, now=NOW)


def test_unknown_signing_key_id():
    headers = replace(signed(), "X-Gateway-Signature-Key-Id", "2030-01")
    with pytest.raises(UnknownKeyId, match="2030-01"):
        verify_request("GET", TARGET, headers, SECRETS, now=NOW)


@pytest.mark.parametrize("age, error", [
    (0, None), (300, None), (-300, None),
    (301, ExpiredSignature), (86_400, ExpiredSignature), (-301, FutureSignature), (-86_400, FutureSignature),
])
def test_timestamp_must_be_within_max_age(age, error):
    headers = signed(now=NOW - age)
    if error is None:
        assert verify_request("GET", TARGET, headers, SECRETS, now=NOW).org_id == "acme"
    else:
        with pytest.raises(error):
            verify_request("GET", TARGET, headers, SECRETS, now=NOW)


def test_max_age_is_adjustable_and_now_defaults_to_the_clock():
    import time
    with pytest.raises(ExpiredSignature):
        verify_request("GET", TARGET, signed(now=NOW - 31), SECRETS, max_age=30, now=NOW)
    assert verify_request("GET", TARGET, signed(now=time.time()), SECRETS).key_id == IDENTITY.key_id
    with pytest.raises(ExpiredSignature):
        verify_request("GET", TARGET, signed(now=NOW), SECRETS)


def test_a_forged_fresh_timestamp_breaks_the_signature():
    headers = replace(signed(now=NOW - 3600), "X-Gateway-Timestamp", str(NOW))
    with pytest.raises(BadSignature):
        verify_request("GET", TARGET, headers, SECRETS, now=NOW)


def test_rotation():
    old_signed = signed(kid="2025-01", secret=OLD)
    # 1. Backends learn the new secret first: they accept old and new.
    both = {"2025-01": OLD, "2025-07": NEW}
    assert verify_request("GET", TARGET, old_signed, both, now=NOW).org_id == "acme"
    # 2. The gateway signs with the new one (listed first); old signatures still verify.
    gateway_signer = signing.make_signer(("2025-07:" + NEW, "2025-01:" + OLD), "http://backend:9000")
    assert gateway_signer.secret.kid == "2025-07"
    new_signed = signed(kid="2025-07", secret=NEW)
    assert verify_request("GET", TARGET, new_signed, both, now=NOW).org_id == "acme"
    assert verify_request("GET", TARGET, old_signed, both, now=NOW + 60).org_id == "acme"
    # 3. The old secret is removed from the backends: only new signatures verify.
    assert verify_request("GET", TARGET, new_signed, {"2025-07": NEW}, now=NOW).org_id == "acme"
    with pytest.raises(UnknownKeyId):
        verify_request("GET", TARGET, old_signed, {"2025-07": NEW}, now=NOW)


@pytest.mark.parametrize("missing", [
    ("X-Gateway-Signature", "X-Gateway-Signature-Key-Id", "X-Gateway-Timestamp"),
    ("X-Gateway-Signature",), ("X-Gateway-Signature-Key-Id",), ("X-Gateway-Timestamp",),
])
def test_missing_signature(missing):
    headers = signed()
    for name in missing:
        headers = replace(headers, name, None)
    with pytest.raises(MissingSignature):
        verify_request("GET", TARGET, headers, SECRETS, now=NOW)
    with pytest.raises(MissingSignature):
        verify_request("GET", TARGET, {}, SECRETS, now=NOW)


@pytest.mark.parametrize("spelling", [str.lower, str.upper, str.title, lambda n: n.replace("-", "_")],
                         ids=["lower", "upper", "title", "underscores"])
@pytest.mark.parametrize("container", [list, dict, CIMultiDict], ids=["pairs", "dict", "multidict"])
def test_header_names_are_case_insensitive(spelling, container):
    headers = container([(spelling(n), v) for n, v in signed()])
    assert verify_request("GET", TARGET, headers, SECRETS, now=NOW).key_id == IDENTITY.key_id


def test_surrounding_whitespace_of_values_is_ignored():
    headers = [(n, f" {v}\t") for n, v in signed()]
    assert verify_request("GET", TARGET, headers, SECRETS, now=NOW).scopes == IDENTITY.scopes


@pytest.mark.parametrize("name", [
    "X-Gateway-Signature", "X-Gateway-Signature-Key-Id", "X-Gateway-Timestamp",
    "X-Org-Id", "X-Api-Key-Id", "X-Api-Key-Scopes", "X-Request-Id",
])
@pytest.mark.parametrize("copy", [str.lower, lambda n: n.replace("-", "_")], ids=["lower", "underscores"])
def test_a_repeated_signed_header_is_refused(name, copy):
    headers = signed()
    value = dict(headers)[name]
    with pytest.raises(MalformedSignature, match="more than once"):
        verify_request("GET", TARGET, headers + [(copy(name), value)], SECRETS, now=NOW)
    with pytest.raises(MalformedSignature):
        verify_request("GET", TARGET, CIMultiDict(headers + [(name, value)]), SECRETS, now=NOW)


@pytest.mark.parametrize("name, value", [
    ("X-Gateway-Signature", "v2=" + "0" * 64),
    ("X-Gateway-Signature", "v1=" + "A" * 64),
    ("X-Gateway-Signature", "v1=" + "0" * 63),
    ("X-Gateway-Signature", "v1=" + "0" * 65),
    ("X-Gateway-Signature", "0" * 64),
    ("X-Gateway-Signature", "v1=" + "0" * 64 + ",v1=" + "0" * 64),
    ("X-Gateway-Timestamp", "1735689600.0"),
    ("X-Gateway-Timestamp", "+1735689600"),
    ("X-Gateway-Timestamp", "-1"),
    ("X-Gateway-Timestamp", "01735689600"),
    ("X-Gateway-Timestamp", "١٧٣٥٦٨٩٦٠٠"),
    ("X-Gateway-Timestamp", ""),
    ("X-Gateway-Signature-Key-Id", "2025 01"),
    ("X-Gateway-Signature-Key-Id", ""),
])
def test_malformed_signature_headers(name, value):
    with pytest.raises(MalformedSignature):
        verify_request("GET", TARGET, replace(signed(), name, value), SECRETS, now=NOW)


@pytest.mark.parametrize("method, target, header", [
    ("GET", TARGET + "\nx", None), ("GET\n", TARGET, None), ("GET", TARGET, ("X-Org-Id", "acme\nroot")),
    ("GET", TARGET, ("X-Request-Id", "req\r")),
])
def test_a_field_with_a_line_break_is_malformed(method, target, header):
    headers = signed() if header is None else replace(signed(), *header)
    with pytest.raises(MalformedSignature):
        verify_request(method, target, headers, SECRETS, now=NOW)


def test_every_error_is_a_signature_error_with_a_distinct_code():
    errors = [MissingSignature, MalformedSignature, UnknownKeyId, BadSignature, ExpiredSignature, FutureSignature]
    assert all(issubclass(e, SignatureError) for e in errors)
    assert len({e.code for e in errors}) == len(errors)


def test_signatures_are_compared_in_constant_time(monkeypatch):
    calls = []
    real = gateway_verify.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(gateway_verify.hmac, "compare_digest", spy)
    with pytest.raises(BadSignature):
        verify_request("GET", TARGET, replace(signed(), "X-Gateway-Signature", "v1=" + "0" * 64), SECRETS, now=NOW)
    assert calls and calls[-1][1] == "0" * 64


def test_secrets_may_be_str_bytes_or_the_setting_string():
    headers = signed()
    assert verify_request("GET", TARGET, headers, {"2025-01": OLD.encode()}, now=NOW).org_id == "acme"
    assert verify_request("GET", TARGET, headers, f"2025-07:{NEW},2025-01:{OLD}", now=NOW).org_id == "acme"


# --- the two canonical builders agree ------------------------------------------------------------

_text = st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=40)
_fields = st.fixed_dictionaries({
    "kid": st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    "timestamp": st.integers(min_value=0, max_value=10**15 - 1),
    "method": st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    "target": _text.map(lambda t: "/" + t),
    "org_id": _text, "key_id": _text, "scopes": _text, "request_id": _text,
})


@settings(max_examples=300)
@given(_fields)
def test_gateway_and_verifier_build_identical_canonical_strings(fields):
    assert signing.canonical_string(**fields) == gateway_verify.canonical_string(**fields)


@settings(max_examples=100)
@given(_fields, st.sampled_from(["\n", "\r", "\x00"]), st.sampled_from(
    ["kid", "method", "target", "org_id", "key_id", "scopes", "request_id"]))
def test_both_builders_refuse_line_breaks(fields, bad, where):
    fields = {**fields, where: fields[where] + bad}
    with pytest.raises(ValueError):
        signing.canonical_string(**fields)
    with pytest.raises(ValueError):
        gateway_verify.canonical_string(**fields)


_token = st.from_regex(r"[A-Za-z0-9_:.-]{1,20}", fullmatch=True)


@settings(max_examples=200)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    path=st.from_regex(r"(/[A-Za-z0-9%._~-]{1,10}){1,5}", fullmatch=True),
    query=st.from_regex(r"([A-Za-z0-9%=&+._~-]{0,30})", fullmatch=True),
    org=_token, key=_token, scopes=st.lists(_token, max_size=4), now=st.integers(0, 10**10),
)
def test_whatever_the_gateway_signs_the_verifier_accepts(method, path, query, org, key, scopes, now):
    identity = Identity(org, key, tuple(scopes))
    signer = signing.Signer(signing.SigningSecret("k", NEW.encode()))
    headers = signer.headers(now=now, method=method, path=path, query=query, identity=identity, request_id=RID)
    headers += [("X-Org-Id", org), ("X-Api-Key-Id", key), ("X-Api-Key-Scopes", " ".join(scopes)),
                ("X-Request-Id", RID)]
    target = path + ("?" + query if query else "")
    got = verify_request(method, target, headers, {"k": NEW}, now=now)
    assert (got.org_id, got.key_id, got.scopes, got.request_id) == (org, key, tuple(scopes), RID)


def test_the_verifier_imports_only_the_standard_library():
    tree = ast.parse((ROOT / "gateway_verify.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


# --- the gateway side ----------------------------------------------------------------------------


def test_signer_signs_the_target_as_forwarded_with_the_upstream_base_path():
    signer = signing.make_signer(f"2025-01:{OLD}", "http://backend:9000/api/")
    assert signer.path_prefix == "/api"
    headers = signer.headers(now=NOW, method="GET", path="/v1/tasks/42", query="a=1", identity=IDENTITY,
                             request_id=RID)
    backend_sees = replace(signed(), "X-Gateway-Signature", dict(headers)["X-Gateway-Signature"])
    assert verify_request("GET", "/api/v1/tasks/42?a=1", backend_sees, SECRETS, now=NOW).org_id == "acme"
    with pytest.raises(BadSignature):
        verify_request("GET", "/v1/tasks/42?a=1", backend_sees, SECRETS, now=NOW)


def test_an_empty_query_is_signed_without_a_question_mark():
    signer = signing.make_signer(f"2025-01:{OLD}", "http://backend:9000")
    headers = signer.headers(now=NOW, method="GET", path="/v1/status", query="", identity=None, request_id=RID)
    backend_sees = headers + [("X-Request-Id", RID)]
    assert verify_request("GET", "/v1/status", backend_sees, SECRETS, now=NOW).request_id == RID
    with pytest.raises(BadSignature):
        verify_request("GET", "/v1/status?", backend_sees, SECRETS, now=NOW)


def test_no_signer_without_secrets():
    assert signing.make_signer((), "http://backend:9000") is None


def test_client_sent_signature_headers_are_stripped_before_injection():
    client = [
        ("X-Gateway-Signature", "v1=" + "0" * 64), ("x-gateway-signature-key-id", "2025-01"),
        ("X_Gateway_Timestamp", str(NOW)), ("X-GATEWAY-SIGNATURE", "v1=" + "1" * 64), ("X-Gateway-Other", "x"),
        ("Accept", "application/json"),
    ]
    out = upstream_request_headers(
        client, identity=IDENTITY, request_id=RID,
        client=ClientInfo(peer="203.0.113.9", proto="https", host="api.example.com", trusted_proxy=False),
    )
    assert not [n for n, _ in out if fold_name(n).startswith("x-gateway-")]
    assert ("Accept", "application/json") in out


# --- the secrets setting -------------------------------------------------------------------------

PARSERS = [signing.parse_secrets, gateway_verify.parse_secrets]


@pytest.mark.parametrize("parse", PARSERS, ids=["gateway", "verifier"])
def test_parse_secrets(parse):
    parsed = parse(f" 2025-07:{NEW} , 2025-01:{OLD},")
    if parse is signing.parse_secrets:
        assert [(s.kid, s.secret) for s in parsed] == [("2025-07", NEW.encode()), ("2025-01", OLD.encode())]
        assert NEW not in repr(parsed)
    else:
        assert parsed == {"2025-07": NEW.encode(), "2025-01": OLD.encode()}
        assert list(parsed) == ["2025-07", "2025-01"]
    # Only the first ":" separates: the rest belongs to the secret.
    assert _secrets(parse(f"k:{OLD}:x")) == [f"{OLD}:x".encode()]


def _secrets(parsed):
    return [s.secret for s in parsed] if isinstance(parsed, tuple) else list(parsed.values())


BAD_SETTINGS = {
    "no colon": ("0123456789abcdef0123456789abcdefSECRET", "entry 1 is not KEY_ID:SECRET"),
    "short secret": ("k1:tooShortSecret", "has 14 bytes; at least 32"),
    "empty secret": ("k1:", "has 0 bytes"),
    "duplicate key id": (f"k1:{OLD},k1:{NEW}", "'k1' appears twice"),
    "bad key id": (f"k 1:{OLD}", "entry 1: the key id"),
    "empty key id": (f":{OLD}", "entry 1: the key id"),
    "space in secret": ("k1:0123456789abcdef 0123456789abcdefSECRET", "printable ASCII"),
    "non-ASCII secret": ("k1:0123456789abcdef0123456789abcdefSECRÉT", "printable ASCII"),
    "second entry": (f"k1:{OLD},0123456789abcdef0123456789abcdefSECRET", "entry 2 is not"),
    "nothing": (" , ", "no KEY_ID:SECRET"),
}


@pytest.mark.parametrize("parse", PARSERS, ids=["gateway", "verifier"])
@pytest.mark.parametrize("value, message", BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_bad_secrets_settings_are_refused_without_repeating_the_secret(parse, value, message):
    with pytest.raises(ValueError, match=message) as info:
        parse(value)
    for part in value.split(","):
        secret = part.partition(":")[2] if ":" in part else part
        if len(secret) > 3:
            assert secret.strip() not in str(info.value)


def test_the_setting_is_validated_at_start_up():
    loaded = load(ServeSettings, {"upstream": "http://backend:9000"},
                    {"GATEWAY_SIGNING_SECRETS": f"2025-07:{NEW}, 2025-01:{OLD}"})
    assert loaded.signing_secrets == (f"2025-07:{NEW}", f"2025-01:{OLD}")
    with pytest.raises(ConfigError, match="--signing-secrets: the secret of key id 'k1' has 8 bytes") as info:
        load(ServeSettings, {"upstream": "http://backend:9000"}, {"GATEWAY_SIGNING_SECRETS": "k1:tooShort"})
    assert "tooShort" not in str(info.value)
    assert load(ServeSettings, {"upstream": "http://backend:9000"}, {}).signing_secrets == ()
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"upstream": "http://b", "signing_secrets": ["k1:short"]}, ServeSettings)
