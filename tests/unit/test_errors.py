"""Every error answered: a stable code of its own, a status of its family, the envelope around it."""

from __future__ import annotations

import re
from http import HTTPStatus

import pytest

from gateway import errors


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
