"""Credential extraction from headers."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from gateway import errors
from gateway.credentials import extract_credential, key_in_path, redacted_path
from gateway.keys import generate_key

K = "sop_" + "a" * 36


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([("Authorization", f"Bearer {K}")], K),
        ([("authorization", f"bearer   {K} ")], K),
        ([("X-API-Key", K)], K),
        ([("x-api-key", K), ("Authorization", f"Bearer {K}")], K),
        ([], errors.MissingApiKey),
        ([("X-Other", K)], errors.MissingApiKey),
        ([("Authorization", f"Basic {K}")], errors.InvalidApiKey),
        ([("Authorization", "Bearer ")], errors.InvalidApiKey),
        ([("Authorization", f"Bearer {K}"), ("Authorization", f"Bearer {K}")], errors.AmbiguousCredentials),
        ([("X-API-Key", K), ("x-api-key", "other")], errors.AmbiguousCredentials),
        ([("X-API-Key", K), ("Authorization", "Bearer other")], errors.AmbiguousCredentials),
    ],
)
def test_extract_credential(headers, expected):
    if isinstance(expected, type):
        with pytest.raises(expected):
            extract_credential(headers)
    else:
        assert extract_credential(headers) == expected


_KEY = generate_key()


@pytest.mark.parametrize("path, refused", [
    (f"/v1/tasks/{_KEY}", True),
    (f"/{_KEY}/", True),
    (f"/v1/tasks/foo-{_KEY}", True),
    (f"/v1/tasks/x{_KEY}y", True),  # no word boundary needed
    (f"/v1/tasks/%2573op_{_KEY[4:]}", True),  # the canonical form of a key encoded twice
    (f"/v1/tasks/{quote(quote(_KEY.replace('sop_', '%73op_'), safe=''), safe='')}", True),
    ("/v1/tasks/sop_short", False),
    ("/v1/tasks/SOP_" + "a" * 36, False),
    ("/v1/tasks/sop_" + "a" * 35, False),
    ("/v1/tasks/%2541", False),
    ("/v1/tasks/42", False),
    ("/", False),
])
def test_key_in_path(path, refused):
    assert key_in_path(path) is refused


def test_redacted_path_keeps_the_other_segments():
    assert redacted_path(f"/v1/{_KEY}/x/foo-{_KEY}") == "/v1/[redacted]/x/[redacted]"
    assert _KEY[4:] not in redacted_path(f"/v1/tasks/%2573op_{_KEY[4:]}")
