"""The one error tree (gateway/errors.py) and the one error exit (gateway/envelope.py)."""

from __future__ import annotations

import inspect
import logging
import re

import orjson
from aiohttp.http_exceptions import BadHttpMessage

from gateway import errors
from gateway.aiohttp_runner import RedactMalformedRequests
from gateway.envelope import error_body, error_headers, protocol_error

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
