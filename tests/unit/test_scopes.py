"""Unit tests for gateway.scopes: loading scopes.yaml, load errors with lines, and route matching."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.paths import canonicalize
from gateway.scopes import (
    Match,
    WrongMethod,
    Permission,
    NoRoute,
    Rule,
    RuleSet,
    ScopesError,
    load_rules,
    parse_rules,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "scopes.yaml"


def canonical_segments(path: str) -> tuple[str, ...]:
    """The segments the rules are matched on, as the proxy computes them."""
    return canonicalize(path).segments


def ruleset(*specs: str) -> RuleSet:
    """Build a RuleSet from "METHOD TEMPLATE SCOPE|public" specs, through the YAML loader."""
    lines = ["permissions:", "  t:r: Read", "  t:w: Write", "routes:"]
    for spec in specs:
        method, template, access = spec.split()
        lines += [f"  - method: {method}", f"    path: '{template}'"]
        lines.append("    public: true" if access == "public" else f"    scope: {access}")
    return parse_rules("\n".join(lines) + "\n", "test.yaml")


def template_of(found: Match | NoRoute | WrongMethod) -> str:
    assert isinstance(found, Match), found
    return found.rule.template


# --- precedence and method-aware matching -------------------------------------------------

PRECEDENCE = ruleset(
    "GET /a/b t:r",
    "GET /a/{x} t:r",
    "DELETE /a/{x} t:w",
    "GET /a/{p:path} t:r",
    "POST /a/{p:path} t:w",
    "GET /a/b/c/d t:r",
    "GET /a/{x}/c t:r",
    "GET /{x}/b/c t:r",
)


@pytest.mark.parametrize(
    ("method", "path", "template", "params"),
    [
        ("GET", "/a/b", "/a/b", {}),  # literal beats param beats path
        ("GET", "/a/z", "/a/{x}", {"x": "z"}),  # param beats path
        ("GET", "/a/z/y", "/a/{p:path}", {"p": "z/y"}),
        ("GET", "/a/b/c", "/a/{x}/c", {"x": "b"}),  # literal branch a/b/c dead-ends: backtrack to {x}
        ("GET", "/a/b/c/d", "/a/b/c/d", {}),
        ("GET", "/a/b/c/e", "/a/{p:path}", {"p": "b/c/e"}),  # both deeper branches dead-end
        ("GET", "/z/b/c", "/{x}/b/c", {"x": "z"}),
        ("POST", "/a/b", "/a/{p:path}", {"p": "b"}),  # /a/b and /a/{x} lack POST: fall back
        ("DELETE", "/a/b", "/a/{x}", {"x": "b"}),  # /a/b lacks DELETE: fall back to {x}
        ("HEAD", "/a/b", "/a/b", {}),
        ("HEAD", "/a/b/c/e", "/a/{p:path}", {"p": "b/c/e"}),
    ],
)
def test_precedence(method, path, template, params):
    found = PRECEDENCE.match(method, canonical_segments(path))
    assert template_of(found) == template
    assert dict(found.params) == params


@pytest.mark.parametrize(
    ("method", "segments", "expected"),
    [
        ("PUT", ("a", "b"), WrongMethod(("DELETE", "GET", "HEAD", "POST"))),
        ("DELETE", ("a", "b", "c"), WrongMethod(("GET", "HEAD", "POST"))),
        ("POST", ("z", "b", "c"), WrongMethod(("GET", "HEAD"))),
        ("get", ("a", "b"), WrongMethod(("DELETE", "GET", "HEAD", "POST"))),  # methods are case-sensitive
        ("GET", ("a",), NoRoute()),  # {p:path} needs at least one segment
        ("POST", ("a",), NoRoute()),
        ("GET", (), NoRoute()),
        ("GET", ("zzz",), NoRoute()),
        ("GET", ("a", "b", ""), NoRoute()),  # trailing slash: not /a/b, not even {p:path}
        ("GET", ("a", ""), NoRoute()),  # an empty segment is not a {x}
        ("GET", ("a", "", "c"), NoRoute()),
        ("GET", ("", "b", "c"), NoRoute()),
        ("GET", ("",), NoRoute()),
    ],
)
def test_not_found_and_method_not_allowed(method, segments, expected):
    assert PRECEDENCE.match(method, segments) == expected


@pytest.mark.parametrize(
    ("method", "path", "rule_method", "template"),
    [
        ("HEAD", "/h", "GET", "/h"),  # HEAD via GET
        ("HEAD", "/h2", "HEAD", "/h2"),  # an explicit HEAD rule wins on its template
        ("GET", "/h2", "GET", "/h2"),
        ("HEAD", "/m/a", "GET", "/m/{x}"),  # the more specific template's GET answers HEAD
        ("HEAD", "/m/a/b", "HEAD", "/m/{p:path}"),
    ],
)
def test_head(method, path, rule_method, template):
    rules = ruleset("GET /h t:r", "GET /h2 t:r", "HEAD /h2 public", "GET /m/{x} t:r", "HEAD /m/{p:path} public",
                    "POST /p t:w")
    found = rules.match(method, canonical_segments(path))
    assert (found.rule.method, found.rule.template) == (rule_method, template)
    # HEAD is only added to Allow next to GET.
    assert rules.match("HEAD", ("p",)) == WrongMethod(("POST",))


def test_root_template_and_params_per_rule():
    rules = ruleset("GET / public", "GET /t/{id} t:r", "PATCH /t/{task_id} t:w")
    assert template_of(rules.match("GET", ())) == "/"
    assert rules.match("POST", ()) == WrongMethod(("GET", "HEAD"))
    assert dict(rules.match("GET", ("t", "7")).params) == {"id": "7"}
    assert dict(rules.match("PATCH", ("t", "7")).params) == {"task_id": "7"}
    # Segments are already decoded: a param may hold any non-empty text.
    assert dict(rules.match("GET", ("t", "a b%2F"),).params) == {"id": "a b%2F"}


def test_results_are_immutable():
    found = PRECEDENCE.match("GET", ("a", "z"))
    with pytest.raises(TypeError):
        found.params["x"] = "y"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.rule.scope = "t:w"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        PRECEDENCE.rules = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        PRECEDENCE.permissions["t:x"] = "X"  # type: ignore[index]


# --- load errors ---------------------------------------------------------------------------

BASE = """\
permissions:
  tasks:read: View tasks
  tasks:write: Manage tasks
routes:
  - method: GET
    path: /v1/tasks
    scope: tasks:read
"""  # a second route starts on line 8: method 8, path 9, scope/public 10


def route(method: str = "GET", path: str = "/v1/x", extra: str = "    scope: tasks:read\n") -> str:
    return BASE + f"  - method: {method}\n    path: '{path}'\n" + extra


MALFORMED = [
    "v1/x",  # no leading slash
    "",
    "/v1//x",  # empty segment
    "/v1/x/",  # trailing slash
    "/v1/abc{id}",  # literal and param mixed
    "/v1/{id}abc",
    "/v1/{a}{b}",
    "/v1/{id",
    "/v1/id}",
    "/v1/{}",
    "/v1/{1d}",
    "/v1/{id:int}",
    "/v1/{p:path}/x",  # {x:path} not last
    "/v1/{id}/{id}",  # duplicate param name
    "/v1/{id}/{id:path}",
    "/v1/..",
    "/v1/./x",
    "/v1/a b",
    "/v1/%41",
    "/v1/x?y",
]


@pytest.mark.parametrize("template", MALFORMED)
def test_malformed_template(template):
    with pytest.raises(ScopesError) as info:
        parse_rules(route(path=template))
    err = info.value
    assert (err.file, err.line, err.field) == ("scopes.yaml", 9, "routes[1].path")
    assert err.message.startswith(f"malformed template {template!r}")


@pytest.mark.parametrize("template", ["/", "/v1/{p:path}", "/v1/x.y-z_~!$&'()*+,=:@/{A_1}"])
def test_wellformed_template(template):
    parse_rules(route(path=template.replace("'", "''")))


ERRORS = [
    # (id, text, line, field, message fragment)
    ("unknown-scope", route(extra="    scope: tasks:reed\n"), 10, "routes[1].scope", "unknown scope 'tasks:reed'"),
    ("unknown-top-field", BASE + "extra: 1\n", 8, "extra", "unknown field 'extra'"),
    ("unknown-route-field", route(extra="    scopes: tasks:read\n"), 10, "routes[1].scopes", "unknown field 'scopes'"),
    ("lower-case-method", route(method="get"), 8, "routes[1].method", "upper case: 'get'"),
    ("mixed-case-method", route(method="Post"), 8, "routes[1].method", "upper case"),
    ("unknown-method", route(method="FETCH"), 8, "routes[1].method", "unknown method 'FETCH'"),
    # WebDAV's COPY and MOVE carry a second path (Destination) that the gateway does not authorize:
    # they can never be routed.
    ("webdav-copy", route(method="COPY"), 8, "routes[1].method", "unknown method 'COPY'"),
    ("webdav-move", route(method="MOVE"), 8, "routes[1].method", "unknown method 'MOVE'"),
    ("method-not-text", route(method="5"), 8, "routes[1].method", "must be a string"),
    ("missing-path", BASE + "  - method: GET\n    scope: tasks:read\n", 8, "routes[1].path", "missing 'path'"),
    ("duplicate-rule", route(path="/v1/tasks", extra="    scope: tasks:write\n"), 8, "routes[1]",
     "(line 8) and GET /v1/tasks (line 5"),
    ("ambiguous-params", BASE + "  - method: GET\n    path: /v1/tasks/{id}\n    scope: tasks:read\n"
     "  - method: GET\n    path: /v1/tasks/{task_id}\n    scope: tasks:read\n", 11, "routes[2]",
     "GET /v1/tasks/{task_id} (line 11) and GET /v1/tasks/{id} (line 8) are the same method"),
    ("scope-and-public", route(extra="    scope: tasks:read\n    public: true\n"), 11, "routes[1].public", "not both"),
    ("neither", route(extra=""), 8, "routes[1]", "needs 'scope: <scope>' or 'public: true'"),
    ("public-false", route(extra="    public: false\n"), 8, "routes[1]", "or 'public: true'"),
    ("public-not-bool", route(extra="    public: 'yes'\n"), 10, "routes[1].public", "true or false"),
    ("scope-not-text", route(extra="    scope:\n"), 10, "routes[1].scope", "must be a string"),
    ("yaml-syntax", BASE + "  - method: GET: x\n", 8, "", "YAML syntax error: mapping values are not allowed"),
    ("yaml-unclosed", BASE + "  - method: [GET\n    path: /x\n", 9, "", "YAML syntax error: expected ','"),
    ("duplicate-permission", BASE.replace("  tasks:write:", "  tasks:read: Again\n  tasks:write:"), 3,
     "permissions.tasks:read", "duplicate key 'tasks:read' (first on line 2)"),
    ("duplicate-route-key", route(extra="    scope: tasks:read\n    scope: tasks:write\n"), 11,
     "routes[1].scope", "duplicate key 'scope' (first on line 10)"),
    ("empty-file", "", None, "", "empty"),
    ("comments-only", "# nothing here\n", None, "", "empty"),
    ("not-a-mapping", "- a\n- b\n", 1, "", "must be a mapping"),
    ("scalar-file", "hello\n", 1, "", "must be a mapping"),
    ("routes-not-a-list", BASE.split("routes:")[0] + "routes:\n  a: b\n", 4, "routes", "must be a list"),
    ("routes-null", BASE.split("routes:")[0] + "routes:\n", 4, "routes", "must be a list"),
    ("route-not-a-mapping", BASE + "  - GET /v1/x\n", 8, "routes[1]", "must be a mapping"),
    ("missing-routes", BASE.split("routes:")[0], 1, "routes", "missing 'routes'"),
    ("missing-permissions", "routes: []\n", 1, "permissions", "missing 'permissions'"),
    ("empty-permissions", "permissions: {}\nroutes: []\n", 1, "permissions", "non-empty mapping"),
    ("bad-scope-name", BASE.replace("tasks:write: Manage", "Tasks:Write: Manage"), 3, "permissions.Tasks:Write",
     "invalid scope name"),
    ("scope-without-action", BASE.replace("tasks:write: Manage", "tasks: Manage"), 3, "permissions.tasks",
     "invalid scope name"),
    ("empty-label", BASE.replace("Manage tasks", "''"), 3, "permissions.tasks:write", "non-empty string"),
    ("label-not-text", BASE.replace("Manage tasks", "yes"), 3, "permissions.tasks:write", "non-empty string"),
    ("alias", BASE + "  - &r\n    method: POST\n    path: /v1/y\n    scope: tasks:write\n  - *r\n", 12, "",
     "aliases (*name) are not supported"),
    ("cost-zero", route(extra="    scope: tasks:read\n    cost: 0\n"), 11, "routes[1].cost", "from 1 to 1_000_000, not 0"),
    ("cost-too-big", route(extra="    scope: tasks:read\n    cost: 1000001\n"), 11, "routes[1].cost", "from 1 to"),
    ("cost-not-int", route(extra="    scope: tasks:read\n    cost: 2.5\n"), 11, "routes[1].cost", "not 2.5"),
    ("cost-bool", route(extra="    scope: tasks:read\n    cost: true\n"), 11, "routes[1].cost", "not True"),
    ("cost-text", route(extra="    scope: tasks:read\n    cost: '10'\n"), 11, "routes[1].cost", "not '10'"),
    ("cost-on-public", route(extra="    public: true\n    cost: 2\n"), 11, "routes[1].cost", "a public route"),
]


def test_a_route_cost_is_1_unless_the_rule_says():
    rules = parse_rules(route(path="/v1/export", extra="    scope: tasks:read\n    cost: 10\n"))
    assert rules.match("GET", ("v1", "export")).rule.cost == 10
    assert rules.match("HEAD", ("v1", "export")).rule.cost == 10  # HEAD by the GET rule, at its cost
    assert rules.match("GET", ("v1", "tasks")).rule.cost == 1
    assert "cost: 10 units" in rules.explain("GET", ("v1", "export"))
    assert "cost" not in rules.explain("GET", ("v1", "tasks"))
    with pytest.raises(ScopesError, match="cost"):
        RuleSet({"t:r": "R"}, [Rule("GET", "/a", "t:r", False, 3, 0)])


@pytest.mark.parametrize(("text", "line", "field", "fragment"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_load_error(text, line, field, fragment):
    with pytest.raises(ScopesError) as info:
        parse_rules(text)
    err = info.value
    assert (err.file, err.line, err.field) == ("scopes.yaml", line, field), str(err)
    assert fragment in err.message


def test_error_text_names_file_line_and_field():
    with pytest.raises(ScopesError) as info:
        parse_rules(route(extra="    scope: tasks:reed\n"))
    assert str(info.value) == "scopes.yaml:10: routes[1].scope: unknown scope 'tasks:reed'"
    assert str(ScopesError("f.yaml", None, "", "cannot read: gone")) == "f.yaml: cannot read: gone"


def test_bytes_input_and_digest():
    a, b = parse_rules(BASE.encode()), parse_rules("\ufeff" + BASE)
    assert a.digest != b.digest and len(a.digest) == 64
    assert parse_rules(BASE).digest == a.digest
    with pytest.raises(ScopesError, match="not UTF-8") as info:
        parse_rules(BASE.encode() + b"\xff\n")
    assert info.value.line is None


def test_load_rules_reads_file_and_reports_unreadable(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(route(extra="    public: true\n"))
    rules = load_rules(path)
    assert rules.source == str(path) and len(rules.rules) == 2
    with pytest.raises(ScopesError) as info:
        load_rules(tmp_path / "missing.yaml")
    err = info.value
    assert (err.file, err.line, err.field) == (str(tmp_path / "missing.yaml"), None, "")
    assert err.message.startswith("cannot read: ")
    path.write_text(route(method="get"))
    with pytest.raises(ScopesError, match=r"rules\.yaml:8: routes\[1\]\.method: "):
        load_rules(path)


def test_ruleset_constructed_directly_is_checked():
    perms = {"t:r": "Read"}
    with pytest.raises(ScopesError, match="unknown scope 't:x'"):
        RuleSet(perms, [Rule("GET", "/a", "t:x", False, 3)])
    with pytest.raises(ScopesError, match="malformed template"):
        RuleSet(perms, [Rule("GET", "/a/", "t:r", False, 3)])
    with pytest.raises(ScopesError, match="exactly one"):
        RuleSet(perms, [Rule("GET", "/a", "t:r", True, 3)])
    with pytest.raises(ScopesError) as info:
        RuleSet(perms, [Rule("GET", "/a/{x}", "t:r", False, 3), Rule("GET", "/a/{y}", None, True, 9)])
    assert (info.value.line, info.value.field) == (9, "routes[1]")


# --- the shipped scopes.yaml ----------------------------------------------------------------

SHIPPED_RULES = load_rules(SHIPPED)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v1/status", "public"),
        ("HEAD", "/v1/status", "public"),
        ("GET", "/v1/tasks", "tasks:read"),
        ("HEAD", "/v1/tasks", "tasks:read"),
        ("POST", "/v1/tasks", "tasks:write"),
        ("GET", "/v1/tasks/42", "tasks:read"),
        ("PATCH", "/v1/tasks/42", "tasks:write"),
        ("DELETE", "/v1/tasks/42", "tasks:write"),
        ("POST", "/v1/tasks/42/complete", "tasks:write"),
        ("GET", "/v1/reservations/upcoming", "reservations:read"),
        ("GET", "/v1/reservations/r1", "reservations:read"),
        ("PATCH", "/v1/reservations/r1", "reservations:write"),
        ("GET", "/v1/properties/p1/reservations", "reservations:read"),
        ("GET", "/v1/properties/p1/documents/leases/2024.pdf", "properties:read"),
        ("PUT", "/v1/properties/p1/documents/floorplan.png", "properties:write"),
        ("GET", "/v1/guests/g1", "guests:read"),
        ("POST", "/v1/messages", "messages:write"),
        ("GET", "/v1/messages/m1", "messages:read"),
        ("DELETE", "/v1/status", ("GET", "HEAD")),
        ("PUT", "/v1/tasks", ("GET", "HEAD", "POST")),
        # Method-aware: "upcoming" has no PATCH rule, so {reservation_id} answers with its own.
        ("PATCH", "/v1/reservations/upcoming", "reservations:write"),
        ("POST", "/v1/reservations/upcoming", ("DELETE", "GET", "HEAD", "PATCH")),
        ("DELETE", "/v1/messages/m1", ("GET", "HEAD")),
        ("GET", "/v1/tasks/", None),
        ("GET", "/v1/api-keys", None),
        ("GET", "/v1/properties/p1/documents", None),
        ("GET", "/nope", None),
        ("GET", "/", None),
    ],
)
def test_shipped_rules(method, path, expected):
    found = SHIPPED_RULES.match(method, canonical_segments(path))
    if expected is None:
        assert found == NoRoute()
    elif isinstance(expected, tuple):
        assert found == WrongMethod(expected)
    elif expected == "public":
        assert found.rule.public and found.rule.scope is None
    else:
        assert found.rule.scope == expected and not found.rule.public


def test_shipped_file_shape():
    rules = SHIPPED_RULES
    assert rules.source == str(SHIPPED) and len(rules.digest) == 64
    assert 30 <= len(rules.rules) <= 45
    assert list(rules.permissions)[:2] == ["tasks:read", "tasks:write"]
    assert rules.permissions["api_keys:manage"] == "Create and revoke API keys"
    for resource in ("tasks", "reservations", "properties", "guests", "messages"):
        assert f"{resource}:read" in rules.permissions and f"{resource}:write" in rules.permissions
    lines = SHIPPED.read_text().splitlines()
    for rule in rules.rules:  # every rule's line is the "- method:" line of its route
        assert lines[rule.line - 1].strip() == f"- method: {rule.method}"


@pytest.mark.parametrize(
    ("query", "scopes"),
    [
        ("", None),
        ("GUEST", ["guests:read", "guests:write"]),
        ("send", ["messages:write"]),
        ("api_keys", ["api_keys:read", "api_keys:manage"]),
        ("  revoke ", ["api_keys:manage"]),
        ("nothing", []),
    ],
)
def test_catalogue(query, scopes):
    found = SHIPPED_RULES.catalogue(query)
    if scopes is None:
        assert [p.scope for p in found] == list(SHIPPED_RULES.permissions)
    else:
        assert [p.scope for p in found] == scopes
    assert all(isinstance(p, Permission) and p.scope == f"{p.resource}:{p.action}" for p in found)


@pytest.mark.parametrize(
    ("method", "path", "fragments"),
    [
        ("GET", "/v1/tasks/42", ["rule: GET /v1/tasks/{task_id} (", " line ", "task_id='42'",
                                  "requires scope: tasks:read (View tasks)"]),
        ("HEAD", "/v1/tasks", ["rule: GET /v1/tasks", "HEAD is authorized by the GET rule"]),
        ("GET", "/v1/status", ["public"]),
        ("DELETE", "/v1/status", ["405", "Allow: GET, HEAD"]),
        ("GET", "/nope", ["404"]),
    ],
)
def test_explain(method, path, fragments):
    text = SHIPPED_RULES.explain(method, canonical_segments(path))
    assert text.startswith(f"{method} {path}")
    for fragment in fragments:
        assert fragment in text


def test_explain_names_the_line():
    rules = parse_rules(BASE)
    assert "(scopes.yaml line 5)" in rules.explain("GET", ("v1", "tasks"))


@pytest.mark.parametrize(
    ("path", "segments"),
    [("/", ()), ("/v1/tasks", ("v1", "tasks")), ("/v1/tasks/", ("v1", "tasks", ""))],
)
def test_the_rules_see_the_canonical_segments(path, segments):
    # What the proxy and `gateway scopes explain` hand to match/explain (gateway.paths.canonicalize).
    assert canonical_segments(path) == segments


# --- property: the match is a matching template and nothing matching is more specific --------

KIND = {"lit": 0, "param": 1, "path": 2}
segment_spec = st.one_of(st.sampled_from(["a", "b", "c"]).map(lambda s: ("lit", s)), st.just(("param", "")))
shape_spec = st.tuples(st.lists(segment_spec, max_size=4), st.booleans())
rule_spec = st.tuples(st.sampled_from(["GET", "HEAD", "POST", "DELETE"]), shape_spec)


def to_template(segments: list[tuple[str, str]], rest: bool) -> tuple[str, tuple[tuple[str, str], ...]]:
    shape = tuple(segments) + ((("path", ""),) if rest else ())
    parts = [text if kind == "lit" else f"{{p{i}}}" if kind == "param" else f"{{p{i}:path}}"
             for i, (kind, text) in enumerate(shape)]
    return "/" + "/".join(parts), shape


def template_matches(shape: tuple[tuple[str, str], ...], segs: tuple[str, ...]) -> bool:
    """Reference matcher, one segment at a time."""
    if shape and shape[-1][0] == "path":
        fixed, need_more = shape[:-1], True
    else:
        fixed, need_more = shape, False
    if len(segs) < len(fixed) + need_more or (not need_more and len(segs) != len(fixed)):
        return False
    if any(seg == "" for seg in segs):
        return False
    return all(kind != "lit" or text == seg for (kind, text), seg in zip(fixed, segs[:len(fixed)], strict=True))


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(rule_spec, max_size=12, unique_by=lambda r: (r[0], tuple(r[1][0]), r[1][1])),
    requests=st.lists(
        st.tuples(st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PUT"]),
                  st.lists(st.sampled_from(["a", "b", "c", "d", ""]), max_size=6).map(tuple)),
        min_size=1, max_size=10,
    ),
)
def test_match_is_most_specific(specs, requests):
    built = []
    for line, (method, (segments, rest)) in enumerate(specs, start=1):
        template, shape = to_template(segments, rest)
        built.append((Rule(method, template, "t:r", False, line), shape))
    rules = RuleSet({"t:r": "Read"}, [rule for rule, _ in built])
    shapes = {rule.template: shape for rule, shape in built}
    for method, segs in requests:
        matching = [(rule, shape) for rule, shape in built if template_matches(shape, segs)]
        templates_with = {r.template for r, _ in matching if r.method == method}
        if method == "HEAD":
            templates_with |= {r.template for r, _ in matching if r.method == "GET"}
        found = rules.match(method, segs)
        if isinstance(found, Match):
            rule = found.rule
            shape = shapes[rule.template]
            assert template_matches(shape, segs)
            assert rule.method == method or (method, rule.method) == ("HEAD", "GET")
            kinds = tuple(KIND[k] for k, _ in shape)
            for other in templates_with:
                assert not tuple(KIND[k] for k, _ in shapes[other]) < kinds, (rule.template, other)
            for i, (kind, _) in enumerate(shape):
                if kind == "param":
                    assert found.params[f"p{i}"] == segs[i]
                elif kind == "path":
                    assert found.params[f"p{i}"] == "/".join(segs[i:])
        else:
            assert not templates_with
            if matching:
                allow = {r.method for r, _ in matching}
                allow |= {"HEAD"} if "GET" in allow else set()
                assert found == WrongMethod(tuple(sorted(allow)))
            else:
                assert found == NoRoute()


def test_readme_example_loads_and_behaves_as_documented():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("## scopes.yaml", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    rules = parse_rules(block, "README.md")
    assert rules.match("GET", ("v1", "status")).rule.public
    assert rules.match("GET", ("v1", "tasks", "42")).rule.scope == "tasks:read"
    assert rules.match("HEAD", ("v1", "tasks", "42")).rule.scope == "tasks:read"
    assert rules.match("DELETE", ("v1", "tasks", "42")) == WrongMethod(("GET", "HEAD", "PATCH"))
    assert rules.match("GET", ("v1", "files", "a", "b.pdf")).params == {"file_path": "a/b.pdf"}
