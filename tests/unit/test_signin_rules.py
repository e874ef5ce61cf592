"""The pure rules of page sign-in (admin_api/signin_rules.py): secrets, return_to, sealing,
cookies, CSRF and the error page."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from admin_api import signin_rules as rules
from gateway import errors


def test_secrets_are_43_urlsafe_characters_and_fresh():
    made = {rules.new_secret() for _ in range(50)}
    assert len(made) == 50 and all(rules.is_secret_shape(s) for s in made)
    assert not rules.is_secret_shape("A" * 42) and not rules.is_secret_shape("A" * 44)
    assert not rules.is_secret_shape("é" * 43) and not rules.is_secret_shape(None)
    assert not rules.is_secret_shape("+" * 43)


@pytest.mark.parametrize("value, expected", [
    ("/", "/"), ("/keys", "/keys"), ("/keys?tab=a#x", "/keys?tab=a#x"), (None, "/"), ("", "/"),
    ("//evil", "/"), ("/\\evil", "/"), ("\\/evil", "/"), ("https://evil", "/"), ("evil", "/"),
    ("/%2F%2Fevil", "/"), ("/%2f/evil", "/"), ("/%5cevil", "/"), ("/\t/evil", "/"), ("/\r\n/evil", "/"),
    ("/ evil", "/"), ("/\u0085evil", "/"), ("/\uff0fevil", "/"), ("/%0a", "/"), ("/" + "a" * 2001, "/"),
])
def test_return_to_is_a_local_path_or_slash(value, expected):
    assert rules.safe_return_to(value) == expected


@given(st.text(max_size=60))
def test_return_to_never_names_another_host(value):
    out = rules.safe_return_to(value)
    assert out.startswith("/") and not out.startswith("//") and "\\" not in out
    import urllib.parse
    assert not urllib.parse.urlsplit(out).netloc


def test_sealed_tokens_open_only_with_their_session_id():
    sid, other = rules.new_secret(), rules.new_secret()
    blob = rules.seal(sid, {"refresh_token": "rt-123", "id_token": "a.b.c"})
    assert "rt-123" not in blob and sid not in blob
    assert rules.unseal(sid, blob) == {"refresh_token": "rt-123", "id_token": "a.b.c"}
    assert rules.unseal(other, blob) is None
    assert rules.unseal(sid, blob[:-4] + "AAAA") is None
    assert rules.unseal(sid, "not base64!") is None
    assert rules.seal(sid, {"a": 1}) != rules.seal(sid, {"a": 1})  # a fresh nonce each time


def test_cookie_headers():
    assert rules.cookie_names(False) == ("__Host-gw_session", "__Host-gw_login")
    assert rules.cookie_names(True) == ("gw_session", "gw_login")
    assert rules.cookie_header("n", "v", max_age=5, same_site="Strict", insecure=False) == \
        "n=v; Path=/; Max-Age=5; HttpOnly; SameSite=Strict; Secure"
    assert "Secure" not in rules.cookie_header("n", "v", max_age=5, same_site="Lax", insecure=True)


@pytest.mark.parametrize("given, origin, ok", [
    ("tok", None, True), ("tok", "https://admin.example", True), ("tok", "HTTPS://ADMIN.EXAMPLE", True),
    (None, None, False), ("", None, False), ("tok2", None, False), ("to", None, False),
    ("tok", "https://evil.example", False), ("tok", "null", False), ("tok", "https://admin.example:444", False),
])
def test_csrf_rule(given, origin, ok):
    expected = "t" * 43  # a session's token: 43 URL-safe characters
    given = given.replace("tok", expected) if given else given
    assert rules.csrf_ok(expected, given, origin, rules.origin_of("https://admin.example/")) is ok


@pytest.mark.parametrize("expected", ["", "short", "x" * 44, "t" * 42 + "!"])
def test_a_session_without_a_token_of_its_own_accepts_none(expected):
    for sent in (expected, "", "t" * 43):
        assert rules.csrf_ok(expected, sent, None, rules.origin_of("https://admin.example/")) is False


def test_return_to_is_short():
    assert rules.safe_return_to("/" + "a" * 511) == "/" + "a" * 511
    assert rules.safe_return_to("/" + "a" * 512) == "/"  # a started sign-in's record stays small


@pytest.mark.parametrize("metadata, bad", [
    ({"token_endpoint": "https://id.example/token", "jwks_uri": "https://id.example/jwks"}, []),
    ({"token_endpoint": "http://id.example/token"}, ["token_endpoint"]),
    ({"authorization_endpoint": "http://127.0.0.1/auth"}, ["authorization_endpoint"]),  # https issuer: no http at all
    ({"end_session_endpoint": "javascript:alert(1)"}, ["end_session_endpoint"]),
    ({"jwks_uri": 5, "userinfo_endpoint": "https:///nohost"}, ["jwks_uri", "userinfo_endpoint"]),
])
def test_provider_endpoints_must_be_https(metadata, bad):
    assert rules.insecure_endpoints(metadata, "https://id.example") == bad


def test_a_local_provider_may_use_http_on_loopback_only():
    local = "http://127.0.0.1:9000"
    assert rules.insecure_endpoints({"token_endpoint": "http://127.0.0.1:9000/token"}, local) == []
    assert rules.insecure_endpoints({"token_endpoint": "http://10.0.0.1/token"}, local) == ["token_endpoint"]


def test_the_error_page_escapes_and_links_home():
    page = rules.error_page(errors.SignInFailed("provider_error", 'said: <script>alert("x")</script>'))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert '<a href="/">' in page and "400 sign_in_failed" in page and 'href="/static/app.css"' in page
    assert "another account" not in page
    page = rules.error_page(errors.NoOrgRole("org-a"), sign_in_again=True)
    assert "org-a" in page and "Sign in with another account" in page and "403 no_org_role" in page
