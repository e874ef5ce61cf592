"""forward_auth.original_request: which original request a check request names (pure)."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.forward_auth import original_request

NGINX = [("X-Original-Method", "GET"), ("X-Original-URI", "/v1/tasks")]
TRAEFIK = [("X-Forwarded-Method", "POST"), ("X-Forwarded-Uri", "/v1/tasks?a=1")]


def test_each_edge_names_its_original_request():
    assert tuple(original_request("GET", "/", NGINX))[1:] == ("GET", "/v1/tasks")
    assert tuple(original_request("GET", "/", TRAEFIK))[1:] == ("POST", "/v1/tasks?a=1")
    assert tuple(original_request("DELETE", "/envoy/v1/tasks/1", []))[1:] == ("DELETE", "/v1/tasks/1")


@pytest.mark.parametrize("method, target, headers", [
    ("GET", "/", []),
    ("GET", "/envoy", []),
    ("GET", "/", NGINX[:1]),
    ("GET", "/", TRAEFIK[1:]),
], ids=["nothing", "envoy-prefix-alone", "half-nginx", "half-traefik"])
def test_no_original_request_is_missing_original_request(method, target, headers):
    with pytest.raises(errors.MissingOriginalRequest) as caught:
        original_request(method, target, headers)
    assert type(caught.value) is errors.MissingOriginalRequest


@pytest.mark.parametrize("target, headers", [
    ("/", NGINX + NGINX[:1]),
    ("/", TRAEFIK + TRAEFIK[1:]),
    ("/", NGINX + TRAEFIK[1:]),
    ("/envoy/v1/tasks", NGINX),
    ("/envoy/v1/tasks", TRAEFIK),
], ids=["repeated-nginx", "repeated-traefik", "nginx+traefik", "envoy+nginx", "envoy+traefik"])
def test_several_original_requests_are_ambiguous_with_the_same_public_code(target, headers):
    with pytest.raises(errors.AmbiguousOriginalRequest) as caught:
        original_request("GET", target, headers)
    assert (caught.value.status, caught.value.code) == (400, "missing_original_request")


@pytest.mark.parametrize("method", ["G T", "", "GET\r\n"])
def test_a_method_that_is_no_token_is_an_invalid_original_method(method):
    with pytest.raises(errors.InvalidOriginalMethod) as caught:
        original_request("GET", "/", [("X-Original-Method", method), ("X-Original-URI", "/v1/tasks")])
    assert (caught.value.status, caught.value.code) == (400, "missing_original_request")


def test_the_conventions_are_one_table_and_a_new_edge_is_one_row(monkeypatch):
    from gateway import forward_auth

    assert [e.name for e in forward_auth.EDGES] == ["nginx", "traefik", "envoy"]
    assert set(forward_auth.NAMING_HEADERS) == {"x-original-method", "x-original-uri", "x-forwarded-method",
                                                "x-forwarded-uri"}
    caddy = forward_auth.Edge("caddy", "x-caddy-method", "x-caddy-uri")
    monkeypatch.setattr(forward_auth, "EDGES", (*forward_auth.EDGES, caddy))
    got = original_request("GET", "/", [("X-Caddy-Method", "PUT"), ("X-Caddy-Uri", "/v1/tasks/7")])
    assert got == (caddy, "PUT", "/v1/tasks/7")
    assert caddy.own_headers == {"x-caddy-method", "x-caddy-uri"}
    with pytest.raises(errors.AmbiguousOriginalRequest):
        original_request("GET", "/", [("X-Caddy-Method", "PUT"), ("X-Caddy-Uri", "/v1/tasks/7"), *NGINX])
