"""Forged and mis-issued access tokens against a real `gateway admin` process trusting a real
oidc-provider (tests/support/oidc.py). Every variant is 401 invalid_token, none is a 500, and
no token ever reaches the log. The tokens the provider signs with changed claims come from its
own signing code (gateway/data/devidp/provider.mjs); the attacker's own are built here by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
import urllib.request
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.security.conftest import running_admin
from tests.support.oidc import new_key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parts(token: str) -> tuple[dict, dict, str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), signature


def unsigned(header: dict, payload: dict, signature: str = "") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{signature}"


@pytest.fixture(scope="module")
def oidc_admin(oidc_provider, redis_server, tmp_path_factory):
    redis_server.client.flushall()
    log = tmp_path_factory.mktemp("oidc-admin") / "admin.log"
    with running_admin(log, redis_server.url, "--oidc-issuer", oidc_provider.issuer, "--oidc-audience",
                       oidc_provider.audience, "--auth-failure-limit", "0") as admin:
        admin.sent = []  # every token sent: none may appear in the log
        yield admin
    text = log.read_text()
    assert "Traceback" not in text and "unhandled error" not in text, text
    for token in admin.sent:
        assert token not in text, token
        assert len(token.split(".")[-1]) < 20 or token.split(".")[-1] not in text, token


def call(admin, token: str, path: str = "/v1/orgs/org-a/api-keys") -> tuple[int, dict]:
    admin.sent.append(token)
    req = urllib.request.Request(admin.url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def assert_refused(admin, token: str) -> None:
    status, body = call(admin, token)
    assert status == 401, body
    assert body["error"]["code"] == "invalid_token", body


def test_the_genuine_token_is_accepted(oidc_admin, oidc_provider):
    # The baseline: without it every refusal below could be a misconfiguration.
    status, body = call(oidc_admin, oidc_provider.token("alice"))
    assert status == 200, body


def test_a_flipped_signature_is_refused(oidc_admin, oidc_provider):
    token = oidc_provider.token("alice")
    head, _, sig = token.rpartition(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    assert_refused(oidc_admin, f"{head}.{flipped}")


@pytest.mark.parametrize("change", [{"org_id": "org-b"}, {"roles": ["admin"]}, {"sub": "bob"},
                                    {"exp": 4102444800}])
def test_a_changed_payload_under_the_genuine_signature_is_refused(oidc_admin, oidc_provider, change):
    header, payload, sig = parts(oidc_provider.token("victor"))
    assert_refused(oidc_admin, unsigned(header, {**payload, **change}, sig))


def test_another_audience_is_refused(oidc_admin, oidc_provider):
    assert_refused(oidc_admin, oidc_provider.token("alice", aud="https://another-api.test"))


@pytest.mark.parametrize("iss", ["http://127.0.0.1:1", "https://evil.example", None])
def test_another_or_no_issuer_is_refused(oidc_admin, oidc_provider, iss):
    assert_refused(oidc_admin, oidc_provider.token("alice", iss=iss))


def test_an_expired_token_is_refused_past_the_leeway_only(oidc_admin, oidc_provider):
    now = int(time.time())
    assert_refused(oidc_admin, oidc_provider.token("alice", iat=now - 600, exp=now - 60))  # leeway is 30 s
    assert call(oidc_admin, oidc_provider.token("alice", iat=now - 600, exp=now - 5))[0] == 200


def test_a_token_without_exp_is_refused(oidc_admin, oidc_provider):
    assert_refused(oidc_admin, oidc_provider.token("alice", exp=None))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_not_yet_valid_or_issued_in_the_future_is_refused(oidc_admin, oidc_provider, claim):
    assert_refused(oidc_admin, oidc_provider.token("alice", **{claim: int(time.time()) + 300}))


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(oidc_admin, oidc_provider, alg):
    header, payload, _ = parts(oidc_provider.token("alice"))
    assert_refused(oidc_admin, unsigned({**header, "alg": alg}, payload))


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_providers_public_key_is_refused(oidc_admin, oidc_provider, alg):
    header, payload, _ = parts(oidc_provider.token("alice"))
    public = RSAKey.import_key(oidc_provider.keys[0].as_dict(private=False))
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for secret in (public.as_pem(private=False), json.dumps(public.as_dict(private=False)).encode(),
                   unb64(public.as_dict(private=False)["n"])):
        signing_input = unsigned({**header, "alg": alg}, payload).rstrip(".")
        sig = b64(hmac.new(secret, signing_input.encode(), digest).digest())
        assert_refused(oidc_admin, f"{signing_input}.{sig}")


def _attacker_token(oidc_provider, kid: str, **header) -> str:
    _, payload, _ = parts(oidc_provider.token("alice"))
    key = new_key(kid)
    return jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": kid, **header}, payload, key)


def test_a_key_the_provider_never_had_is_refused(oidc_admin, oidc_provider):
    assert_refused(oidc_admin, _attacker_token(oidc_provider, "attacker"))  # a kid the JWKS lacks
    assert_refused(oidc_admin, _attacker_token(oidc_provider, "k1"))  # the provider's kid, another key


def test_a_key_embedded_in_the_header_is_not_trusted(oidc_admin, oidc_provider):
    key = new_key("embedded")
    _, payload, _ = parts(oidc_provider.token("alice"))
    header = {"alg": "RS256", "typ": "at+jwt", "kid": "embedded", "jwk": key.as_dict(private=False),
              "jku": "http://127.0.0.1:1/jwks"}
    assert_refused(oidc_admin, jwt.encode(header, payload, key))


@pytest.mark.parametrize("typ", ["JWT", None])
def test_a_token_that_is_not_an_access_token_is_refused(oidc_admin, oidc_provider, typ):
    # RFC 9068: an access token says typ at+jwt; an ID token (typ JWT) is not one.
    assert_refused(oidc_admin, oidc_provider.token("alice", header={"typ": typ}))


@pytest.mark.parametrize("change", [{"org_id": None}, {"org_id": ["org-a"]}, {"org_id": "org a"},
                                    {"roles": 5}, {"roles": [["admin"]]}, {"sub": "two words"}])
def test_claims_that_name_no_person_of_an_org_are_refused(oidc_admin, oidc_provider, change):
    assert_refused(oidc_admin, oidc_provider.token("alice", **change))


def test_the_clients_own_token_names_no_person_and_is_refused(oidc_admin, oidc_provider):
    # client_credentials from the provider's real token endpoint: sub is the client, no org claim.
    assert_refused(oidc_admin, oidc_provider.client_credentials_token())


@pytest.mark.parametrize("token", ["a.b.c", "eyJ.eyJ.", "..", "eyJhbGciOiJSUzI1NiJ9.e30.", "x" * 4000 + ".y.z"])
def test_garbage_in_three_parts_is_refused_not_a_crash(oidc_admin, token):
    assert_refused(oidc_admin, token)
