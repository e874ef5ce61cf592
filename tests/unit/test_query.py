"""The query string's checks (gateway.query): parsing, keys and method-override parameters."""

from __future__ import annotations

import pytest

from gateway.query import key_in_query, method_override_in_query, query_params

K = "sop_" + "a" * 36


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", []),
        ("a=1&b=2", [("a", "1"), ("b", "2")]),
        ("a=1&a=2", [("a", "1"), ("a", "2")]),
        ("flag&x=", [("flag", ""), ("x", "")]),
        ("api%5Fkey=k&q=a+b%20c", [("api_key", "k"), ("q", "a b c")]),
        ("x=a=b", [("x", "a=b")]),
        ("&&a=1&", [("a", "1")]),
        ("x=%zz&y=%", [("x", "%zz"), ("y", "%")]),
        ("x=%C3%28", [("x", "\ufffd(")]),
        ("a=1;api_key=k", [("a", "1"), ("api_key", "k")]),
    ],
    ids=["empty", "two", "repeated", "blank", "decoded", "eq-in-value", "empty-pairs", "bad-escape",
         "bad-utf8", "semicolon"],
)
def test_query_params(query: str, expected: list[tuple[str, str]]) -> None:
    assert query_params(query) == expected


@pytest.mark.parametrize(
    "params, refused",
    [([("page", "2")], False), ([("api_key", "x")], True), ([("ACCESS_TOKEN", "x")], True),
     ([("q", f"prefix {K}")], True), ([("key", "tasks")], False)],
)
def test_key_in_query(params, refused):
    assert key_in_query(params) is refused


@pytest.mark.parametrize("params, refused", [
    ([("_method", "DELETE")], True),
    ([("_METHOD", "DELETE")], True),
    ([("x", "1"), ("_httpmethod", "PUT")], True),
    ([("X-HTTP-Method-Override", "DELETE")], True),
    ([("x_http_method_override", "DELETE")], True),
    ([("x-method-override", "PATCH")], True),
    ([("x-http-method", "PATCH")], True),
    # the spellings frameworks normalise (names as query_params gives them: decoded once)
    ([("_method[]", "DELETE")], True),
    ([("_method[0]", "DELETE")], True),
    ([("_method[x]", "DELETE")], True),
    ([("x.http.method.override", "DELETE")], True),
    ([("x http method override", "DELETE")], True),
    ([(" _method ", "DELETE")], True),
    ([("_method\x00", "DELETE")], True),
    ([("_method\x00junk", "DELETE")], True),
    ([("%5Fmethod", "DELETE")], True),  # double encoded: %255Fmethod
    ([("%255Fmethod", "DELETE")], True),  # triple
    ([("_method%00", "DELETE")], True),
    ([("_method%5B%5D", "DELETE")], True),
    ([("_\uff4dethod", "DELETE")], True),  # fullwidth m, NFKC
    ([("\uff3fmethod", "DELETE")], True),  # fullwidth low line
    ([("X.HTTP.Method", "PUT")], True),
    ([("x-method.override", "PUT")], True),
    ([("_HTTPMETHOD[]", "PUT")], True),
    ([("method", "x")], False),
    ([("payment_method", "card")], False),
    ([("_methods", "x")], False),
    ([("x_method", "x")], False),
    ([("my_method[]", "x")], False),
    ([("q", "_method=DELETE")], False),
    ([("100%", "x")], False),
    ([("sort", "-created")], False),
    ([], False),
])
def test_method_override_in_query(params, refused):
    assert method_override_in_query(params) is refused
