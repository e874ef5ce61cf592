"""Method-override parameters in the query string, in every spelling frameworks normalise."""

from __future__ import annotations

import pytest

from gateway.query import method_override_in_query


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
