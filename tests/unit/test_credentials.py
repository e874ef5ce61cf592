"""Credential extraction from headers."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.credentials import extract_credential, key_in_query

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


@pytest.mark.parametrize(
    "params, refused",
    [([("page", "2")], False), ([("api_key", "x")], True), ([("ACCESS_TOKEN", "x")], True),
     ([("q", f"prefix {K}")], True), ([("key", "tasks")], False)],
)
def test_key_in_query(params, refused):
    assert key_in_query(params) is refused
