"""The one error tree (gateway/errors.py): every error answered has a stable code of its own and a status of its
family; and the one error exit (gateway/envelope.py) around it."""

from __future__ import annotations

import inspect
import logging
import re
from http import HTTPStatus

import orjson
import pytest
from aiohttp.http_exceptions import BadHttpMessage

from gateway import errors
from gateway.aiohttp_runner import RedactMalformedRequests
from gateway.envelope import error_body, error_headers, protocol_error


def all_errors() -> list[type[errors.ApiError]]:
    out, todo = [], [errors.ApiError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


ERRORS = all_errors()
# A family fixes the status of everything under it.
FAMILIES = {errors.BadRequest: 400, errors.Unauthorized: 401, errors.Forbidden: 403, errors.NotFound: 404,
            errors.ServiceUnavailable: 503}


def test_every_code_is_defined_once():
    owners: dict[str, list[str]] = {}
    for cls in ERRORS:
        if "code" in vars(cls):  # StoreUnconfirmed keeps store_unavailable on purpose: a message of its own
            owners.setdefault(cls.code, []).append(cls.__name__)
    assert {code: names for code, names in owners.items() if len(names) > 1} == {}
    assert len(owners) > 30  # the walk found the classes


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_each_error_has_a_status_of_its_family_and_a_stable_code(cls):
    assert cls.status in {s.value for s in HTTPStatus}, cls.status
    expected = next((status for family, status in FAMILIES.items() if issubclass(cls, family)), None)
    if expected is not None:
        assert cls.status == expected
    else:
        assert 400 <= cls.status < 600, cls.status
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code), cls.code
    assert cls.message.endswith(".") and cls.message[0].isupper(), cls.message


@pytest.mark.parametrize("cls", [c for c in ERRORS if issubclass(c, errors.Unauthorized)], ids=lambda c: c.__name__)
def test_a_401_says_bearer_as_rfc_6750_asks(cls):
    assert cls().headers()["WWW-Authenticate"].startswith('Bearer realm="api"')


def test_the_envelope_carries_code_message_request_id_and_extras():
    err = errors.KeyLimitReached(10)
    assert errors.envelope(err, "req_1") == {"error": {
        "code": "key_limit_reached", "message": err.message, "request_id": "req_1", "limit": 10}}
    assert "10 keys" in err.message


ALL = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.ApiError)]


def test_the_docstring_tree_names_every_error_and_only_those():
    named = set(re.findall(r"\b([A-Z][A-Za-z]+)\b", errors.__doc__.split("\n", 1)[1]))
    header_words = {"Allow", "Retry", "After", "WWW", "Authenticate"}  # "with Retry-After", ...
    assert {c.__name__ for c in ALL} == named - header_words


def test_the_admin_api_errors_are_in_the_tree_with_their_codes():
    assert (errors.MissingToken.status, errors.MissingToken.code) == (401, "missing_token")
    assert (errors.OrgNotFound.status, errors.OrgNotFound.code) == (404, "org_not_found")
    err = errors.FieldError("limit", "limit must be an integer from 1 to 100.")
    assert (err.status, err.code, err.extra) == (400, "validation_failed", {"field": "limit"})


def test_codes_are_unique_per_class_except_where_a_subclass_keeps_its_parents():
    by_code: dict[str, list[type]] = {}
    for c in ALL:
        by_code.setdefault(c.code, []).append(c)
    for code, classes in by_code.items():
        root = min(classes, key=lambda c: len(c.__mro__))
        assert all(issubclass(c, root) for c in classes), (code, classes)


def test_the_envelope_body_and_headers():
    err = errors.InsufficientScope("tasks:write")
    assert orjson.loads(error_body(err, "req_1")) == {"error": {
        "code": "insufficient_scope", "message": "The API key lacks the scope tasks:write.", "request_id": "req_1",
        "required_scope": "tasks:write"}}
    headers = dict(error_headers(err, "req_1"))
    assert headers["Content-Type"] == "application/json" and headers["X-Request-Id"] == "req_1"
    assert headers["Cache-Control"] == "no-store" and 'scope="tasks:write"' in headers["WWW-Authenticate"]


def test_protocol_errors_by_status_and_code():
    assert [type(protocol_error(s)) for s in (400, 413, 414, 431)] == [
        errors.MalformedRequest, errors.PayloadTooLarge, errors.UriTooLong, errors.HeadersTooLarge]
    assert type(protocol_error(400, "invalid_host")) is errors.InvalidHost
    odd = protocol_error(504)
    assert (odd.status, odd.code) == (504, "internal_error")


def test_a_parse_error_is_logged_without_the_bytes_it_quotes():
    secret = "sop_" + "A" * 36
    try:
        raise BadHttpMessage(f"bad header: Authorization: Bearer {secret}")
    except BadHttpMessage as exc:
        record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s",
                                   ("10.0.0.1",), (type(exc), exc, exc.__traceback__))
    assert RedactMalformedRequests().filter(record)
    text = logging.Formatter().format(record)
    assert text == "malformed HTTP request refused (BadHttpMessage, status 400) from 10.0.0.1"
    assert secret not in text


def test_one_name_per_thing_no_other_class_is_named_like_an_error():
    import importlib
    import pkgutil

    import admin_api
    import gateway

    api_names = {c.__name__ for c in ALL}
    clashes = []
    for package in (gateway, admin_api):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            # admin_api.schemas: its class names are the OpenAPI document's schema names (public);
            # its RevokedApiKey is the body of a revoke's answer, named in that document.
            if info.name in ("gateway.__main__", "gateway.errors", "admin_api.schemas"):
                continue
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if inspect.isclass(obj) and obj.__module__ == module.__name__ and name in api_names:
                    clashes.append(f"{info.name}.{name}")
    assert clashes == []
