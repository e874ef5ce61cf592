"""--help text of the settings flags: each flag says its field's description."""

from __future__ import annotations

import argparse
from typing import Annotated

import msgspec
import pytest
from msgspec import Meta

from gateway.config import AdminSettings, ServeSettings, add_arguments, flag

Seconds = Annotated[float, Meta(gt=0)]


class QuotedSettings(msgspec.Struct, frozen=True):
    # A description holding "'" (str(annotation) shows it between double quotes) and one
    # on top of a constrained alias (two Meta in the flattened annotation).
    name: Annotated[str, Meta(description="The key's name, as the page's form says it")] = ""
    wait: Annotated[Seconds, Meta(description="Seconds to wait")] = 1.0
    bare: int = 0


def _helps(settings_type: type[msgspec.Struct]) -> dict[str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser, settings_type)
    return {action.dest: action.help for action in parser._actions if action.dest != "help"}


def test_a_description_with_a_quote_is_the_help_text():
    helps = _helps(QuotedSettings)
    assert helps["name"].startswith("The key's name, as the page's form says it (default: none; env GATEWAY_NAME)")
    assert helps["wait"].startswith("Seconds to wait (default: 1;")
    assert helps["bare"].startswith("bare (default: 0;")  # no description: the field's name


@pytest.mark.parametrize("settings_type", [ServeSettings, AdminSettings])
def test_every_setting_has_its_description_as_help(settings_type):
    helps = _helps(settings_type)
    for field in msgspec.structs.fields(settings_type):
        text = helps[field.name]
        assert not text.startswith(f"{field.name} ("), f"{flag(field.name)} has no description: {text}"


@pytest.mark.parametrize("env, message", [
    ({"GATEWAY_OIDC_ISSUER": "https://idp.example"}, "--oidc-audience: required with --oidc-issuer"),
    ({"GATEWAY_OIDC_AUDIENCE": "https://api.example"}, "--oidc-audience: given without --oidc-issuer"),
    ({"GATEWAY_OIDC_ISSUER": "http://idp.example", "GATEWAY_OIDC_AUDIENCE": "a"}, "--oidc-issuer: expected an https://"),
    ({"GATEWAY_OIDC_ISSUER": "idp.example", "GATEWAY_OIDC_AUDIENCE": "a"}, "--oidc-issuer: expected an https://"),
])
def test_oidc_settings_are_checked_together(env, message):
    from gateway.config import ConfigError, load

    with pytest.raises(ConfigError, match=message):
        load(AdminSettings, {}, env)


def test_oidc_issuer_may_be_http_on_loopback_only():
    from gateway.config import load

    s = load(AdminSettings, {}, {"GATEWAY_OIDC_ISSUER": "http://127.0.0.1:9000", "GATEWAY_OIDC_AUDIENCE": "a"})
    assert (s.oidc_issuer, s.oidc_org_claim, s.oidc_roles_claim) == ("http://127.0.0.1:9000", "org_id", "roles")


SIGNIN_ENV = {"GATEWAY_OIDC_ISSUER": "https://idp.example", "GATEWAY_OIDC_AUDIENCE": "a",
              "GATEWAY_OIDC_CLIENT_ID": "admin-api", "GATEWAY_OIDC_CLIENT_SECRET": "s3cret-value",
              "GATEWAY_PUBLIC_URL": "https://admin.example"}


@pytest.mark.parametrize("change, message", [
    ({"GATEWAY_PUBLIC_URL": ""}, "--oidc-client-id: needs --public-url"),
    ({"GATEWAY_OIDC_ISSUER": "", "GATEWAY_OIDC_AUDIENCE": ""}, "--oidc-client-id: needs --oidc-issuer"),
    ({"GATEWAY_OIDC_CLIENT_SECRET": ""}, "GATEWAY_OIDC_CLIENT_SECRET: required with --oidc-client-id"),
    ({"GATEWAY_OIDC_CLIENT_ID": ""}, "GATEWAY_OIDC_CLIENT_SECRET: given without --oidc-client-id"),
    ({"GATEWAY_PUBLIC_URL": "http://admin.example"}, "--public-url: expected an https://"),
    ({"GATEWAY_PUBLIC_URL": "https://admin.example/admin"}, "--public-url: expected an origin without a path"),
    ({"GATEWAY_PUBLIC_URL": "https://admin.example/?x=1"}, "--public-url: expected an https://"),
    ({"GATEWAY_OIDC_SCOPES": "email profile"}, "--oidc-scopes: must include openid"),
    ({"GATEWAY_SESSION_IDLE": "100", "GATEWAY_SESSION_LIFETIME": "50"}, "--session-idle: at most --session-lifetime"),
    ({"GATEWAY_COOKIE_INSECURE": "maybe"}, "GATEWAY_COOKIE_INSECURE"),
    ({"GATEWAY_COOKIE_INSECURE": "true"}, "--cookie-insecure: only for a page on http on a loopback address"),
    ({"GATEWAY_SIGNIN_RATE": "-1"}, "GATEWAY_SIGNIN_RATE"),
])
def test_signin_settings_are_checked_together(change, message):
    from gateway.config import ConfigError, load

    with pytest.raises(ConfigError, match=message):
        load(AdminSettings, {}, {**SIGNIN_ENV, **change})


def test_signin_settings_load_and_hide_the_secret():
    from gateway.config import load

    s = load(AdminSettings, {"cookie_insecure": "true"}, {**SIGNIN_ENV, "GATEWAY_PUBLIC_URL": "http://127.0.0.1:8081",
                                                          "GATEWAY_OPERATOR_TOKEN": "operator-token-0123456789"})
    assert s.signin_enabled and s.cookie_insecure and s.public_url == "http://127.0.0.1:8081"
    assert (s.session_lifetime, s.session_idle, s.session_refresh) == (43200.0, 1800.0, 300.0)
    assert "s3cret-value" not in repr(s) and "operator-token-0123456789" not in repr(s)
    assert "oidc_client_id='admin-api'" in repr(s)
    assert not load(AdminSettings, {}, {}).signin_enabled
