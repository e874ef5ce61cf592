"""scopes.yaml: the permission catalogue and the route rules, compiled into a segment trie.

Pure module (no aiohttp, no redis); the file format is described in README "scopes.yaml".
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, NoReturn

from gateway.yaml_lines import FileError, YamlError, compose

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
TOP_FIELDS = ("permissions", "routes")
ROUTE_FIELDS = ("method", "path", "scope", "public", "cost")
MAX_COST = 1_000_000  # request units one request of a route may cost (a key's limits count units)
SCOPE_RE = re.compile(r"[a-z][a-z0-9_]*:[a-z][a-z0-9_]*")
_LITERAL_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,=:@-]+")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")
LITERAL, PARAM, CATCHALL = 0, 1, 2  # segment kinds, in precedence order
_EMPTY: Mapping[str, str] = MappingProxyType({})


class ScopesError(FileError):
    """A scopes file that cannot be used; ``str()`` reads ``file:line: field: message``."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One route rule: ``method template`` needs ``scope``, or is ``public``; a request of it
    spends ``cost`` units of a limited key's budget."""

    method: str
    template: str
    scope: str | None
    public: bool
    line: int
    cost: int = 1


@dataclass(frozen=True, slots=True)
class Match:
    """The rule for a request, with the decoded path parameters (``{x:path}`` joined by ``/``)."""

    rule: Rule
    params: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class NoRoute:
    """No template matches the path (404)."""


@dataclass(frozen=True, slots=True)
class WrongMethod:
    """Templates match the path but none has the method (405); ``allow`` is sorted."""

    allow: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Permission:
    """One catalogue entry: ``scope`` is ``resource:action``."""

    scope: str
    resource: str
    action: str
    label: str


_NOT_FOUND = NoRoute()


def parse_template(template: str) -> tuple[tuple[int, str], ...]:
    """Split a path template into ``(kind, literal or parameter name)`` segments.

    Raises ValueError saying what is wrong when the template is malformed.
    """
    if not template.startswith("/"):
        raise ValueError("must start with '/'")
    if template == "/":
        return ()
    parts = template[1:].split("/")
    shape: list[tuple[int, str]] = []
    names: set[str] = set()
    for i, part in enumerate(parts):
        if not part:
            raise ValueError("empty segment ('//' or a trailing '/')")
        if "{" not in part and "}" not in part:
            if part in (".", "..") or not _LITERAL_RE.fullmatch(part):
                raise ValueError(f"invalid literal segment {part!r}")
            shape.append((LITERAL, part))
            continue
        m = _PARAM_RE.fullmatch(part)
        if m is None:
            raise ValueError(f"bad segment {part!r}: a parameter is a whole segment, {{name}} or {{name:path}}")
        name, rest = m[1], bool(m[2])
        if name in names:
            raise ValueError(f"duplicate parameter {name!r}")
        if rest and i != len(parts) - 1:
            raise ValueError(f"{{{name}:path}} must be the last segment")
        names.add(name)
        shape.append((CATCHALL if rest else PARAM, name))
    return tuple(shape)


class _Target:
    """What a (template shape, method) resolves to; a Match is prebuilt when there are no params."""

    __slots__ = ("rule", "bindings", "fixed")

    def __init__(self, rule: Rule, shape: tuple[tuple[int, str], ...]) -> None:
        self.rule = rule
        self.bindings = tuple(
            (name, pos, kind == CATCHALL) for pos, (kind, name) in enumerate(shape) if kind != LITERAL
        )
        self.fixed = None if self.bindings else Match(rule, _EMPTY)

    def bind(self, segments: tuple[str, ...]) -> Match:
        params = {name: "/".join(segments[pos:]) if rest else segments[pos] for name, pos, rest in self.bindings}
        return Match(self.rule, MappingProxyType(params))


class _Node:
    """A trie node: children by segment kind, and method -> target for templates ending here."""

    __slots__ = ("literals", "param", "catchall", "methods")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.catchall: _Node | None = None
        self.methods: dict[str, _Target] = {}


def _find(node: _Node, segs: tuple[str, ...], i: int, method: str) -> _Target | None:
    """Depth-first in precedence order (literal, param, catch-all): the first target for method."""
    if i == len(segs):
        return node.methods.get(method)
    child = node.literals.get(segs[i])
    if child is not None and (found := _find(child, segs, i + 1, method)) is not None:
        return found
    if node.param is not None and (found := _find(node.param, segs, i + 1, method)) is not None:
        return found
    return node.catchall.methods.get(method) if node.catchall is not None else None


def _allowed(node: _Node, segs: tuple[str, ...], i: int, out: set[str]) -> None:
    """Add the methods of every template that matches the path to ``out``."""
    if i == len(segs):
        out.update(node.methods)
        return
    child = node.literals.get(segs[i])
    if child is not None:
        _allowed(child, segs, i + 1, out)
    if node.param is not None:
        _allowed(node.param, segs, i + 1, out)
    if node.catchall is not None:
        out.update(node.catchall.methods)


class RuleSet:
    """The compiled rules; immutable after construction."""

    __slots__ = ("permissions", "rules", "source", "digest", "_root", "_catalogue")

    permissions: Mapping[str, str]
    rules: tuple[Rule, ...]
    source: str
    digest: str

    def __init__(self, permissions: Mapping[str, str], rules: Iterable[Rule], *,
                 source: str = "scopes.yaml", digest: str = "") -> None:
        """Compile ``rules``; ScopesError for a bad template, unknown scope or duplicate rule."""
        perms = MappingProxyType(dict(permissions))
        rule_tuple = tuple(rules)
        root = _Node()
        for index, rule in enumerate(rule_tuple):
            where = f"routes[{index}]"

            def fail(field: str, message: str, rule: Rule = rule, where: str = where) -> NoReturn:
                raise ScopesError(source, rule.line, where + field, message)

            if rule.method not in METHODS:
                fail(".method", f"unknown method {rule.method!r}")
            if isinstance(rule.cost, bool) or not isinstance(rule.cost, int) or not 1 <= rule.cost <= MAX_COST:
                fail(".cost", f"cost must be an integer from 1 to {MAX_COST:_}, not {rule.cost!r}")
            if rule.public == (rule.scope is not None):
                fail("", "needs exactly one of 'scope' or 'public: true'")
            if rule.scope is not None and rule.scope not in perms:
                fail(".scope", f"unknown scope {rule.scope!r}")
            try:
                shape = parse_template(rule.template)
            except ValueError as exc:
                fail(".path", f"malformed template {rule.template!r}: {exc}")
            node = root
            for kind, text in shape:
                if kind == LITERAL:
                    node = node.literals.setdefault(text, _Node())
                elif kind == PARAM:
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node.catchall = node.catchall or _Node()
                    node = node.catchall
            if (earlier := node.methods.get(rule.method)) is not None:
                other = earlier.rule
                fail("", f"{rule.method} {rule.template} (line {rule.line}) and {other.method} {other.template} "
                         f"(line {other.line}) are the same method on the same template shape")
            node.methods[rule.method] = _Target(rule, shape)
        _add_head(root)
        catalogue = tuple(Permission(s, *s.split(":", 1), label) for s, label in perms.items())
        for name, value in (("permissions", perms), ("rules", rule_tuple), ("source", source), ("digest", digest),
                            ("_root", root), ("_catalogue", catalogue)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("RuleSet is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("RuleSet is immutable")

    def __repr__(self) -> str:
        return f"<RuleSet {self.source} {len(self.permissions)} permissions, {len(self.rules)} rules>"

    def match(self, method: str, segments: tuple[str, ...]) -> Match | NoRoute | WrongMethod:
        """The most specific rule for ``method`` on the decoded ``segments``, else 404 / 405."""
        if "" in segments:  # a trailing slash or an empty segment matches nothing
            return _NOT_FOUND
        target = _find(self._root, segments, 0, method)
        if target is not None:
            return target.fixed or target.bind(segments)
        allow: set[str] = set()
        _allowed(self._root, segments, 0, allow)
        return WrongMethod(tuple(sorted(allow))) if allow else _NOT_FOUND

    def catalogue(self, query: str = "") -> list[Permission]:
        """Permissions whose scope or label contains ``query`` (case-insensitive), in file order."""
        q = query.strip().casefold()
        return [p for p in self._catalogue if q in p.scope.casefold() or q in p.label.casefold()]

    def explain(self, method: str, segments: Iterable[str]) -> str:
        """Human-readable: which rule (template, line) authorizes the request, or 404 / 405."""
        segs = tuple(segments)
        request = f"{method} /{'/'.join(segs)}"
        found = self.match(method, segs)
        if isinstance(found, NoRoute):
            return f"{request}\n  404 route_not_found: no rule in {self.source} matches this path"
        if isinstance(found, WrongMethod):
            return f"{request}\n  405 method_not_allowed: Allow: {', '.join(found.allow)}"
        rule = found.rule
        via = "; HEAD is authorized by the GET rule" if rule.method != method else ""
        lines = [request, f"  rule: {rule.method} {rule.template} ({self.source} line {rule.line}{via})"]
        if found.params:
            lines.append("  params: " + ", ".join(f"{k}={v!r}" for k, v in found.params.items()))
        if rule.public:
            lines.append("  public: forwarded without an API key")
        else:
            lines.append(f"  requires scope: {rule.scope} ({self.permissions[rule.scope]})")
            if rule.cost != 1:
                lines.append(f"  cost: {rule.cost} units of a limited key's budget")
        return "\n".join(lines)


def _add_head(node: _Node) -> None:
    """Let every template's GET rule answer HEAD unless it has its own HEAD rule."""
    if "GET" in node.methods:
        node.methods.setdefault("HEAD", node.methods["GET"])
    for child in (*node.literals.values(), node.param, node.catchall):
        if child is not None:
            _add_head(child)


def parse_rules(text: str | bytes, filename: str = "scopes.yaml") -> RuleSet:
    """Parse and compile a scopes file's contents; ScopesError (with file, line, field) if invalid."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(data).hexdigest()
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ScopesError(filename, None, "", f"not UTF-8 text (byte {exc.start})") from None
    try:
        doc = compose(text)
    except YamlError as exc:
        raise ScopesError(filename, exc.line, exc.field, exc.message) from None

    def fail(field: str, message: str, *, key: bool = False, line: int | None = None) -> NoReturn:
        raise ScopesError(filename, line or (doc.key_lines if key else doc.lines).get(field), field, message)

    top = doc.value
    if "" not in doc.lines:
        fail("", "the file is empty; it needs 'permissions' and 'routes'")
    if not isinstance(top, dict):
        fail("", "the file must be a mapping with 'permissions' and 'routes'")
    for key in top:
        if key not in TOP_FIELDS:
            fail(key, f"unknown field {key!r} (expected permissions, routes)", key=True)
    for key in TOP_FIELDS:
        if key not in top:
            fail(key, f"missing {key!r}", line=doc.lines[""])

    permissions = top["permissions"]
    if not isinstance(permissions, dict) or not permissions:
        fail("permissions", "must be a non-empty mapping of scope to label", line=doc.key_lines["permissions"])
    for scope, label in permissions.items():
        field = f"permissions.{scope}"
        if not SCOPE_RE.fullmatch(scope):
            fail(field, f"invalid scope name {scope!r} (expected resource:action in lower case, e.g. tasks:read)",
                 key=True)
        if not isinstance(label, str) or not label.strip():
            fail(field, "the label must be a non-empty string")

    routes = top["routes"]
    if not isinstance(routes, list):
        fail("routes", "must be a list of rules", line=doc.key_lines["routes"])
    rules = [_parse_route(route, f"routes[{i}]", permissions, doc.lines, fail) for i, route in enumerate(routes)]
    return RuleSet(permissions, rules, source=filename, digest=digest)


def _parse_route(route: Any, where: str, permissions: Mapping[str, str], lines: Mapping[str, int],
                 fail: Callable[..., NoReturn]) -> Rule:
    """Validate one entry of ``routes`` (``where`` is its field path) into a Rule."""
    if not isinstance(route, dict):
        fail(where, "each route must be a mapping with method, path and scope or public")
    line = lines[where]
    for key in route:
        if key not in ROUTE_FIELDS:
            fail(f"{where}.{key}", f"unknown field {key!r} (expected method, path, scope, public, cost)", key=True)
    for key in ("method", "path"):
        if key not in route:
            fail(f"{where}.{key}", f"missing {key!r}", line=line)
        if not isinstance(route[key], str):
            fail(f"{where}.{key}", f"{key} must be a string")
    method, path = route["method"], route["path"]
    if method.upper() != method:
        fail(f"{where}.method", f"method must be upper case: {method!r} (write {method.upper()!r})")
    if method not in METHODS:
        fail(f"{where}.method", f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    try:
        parse_template(path)
    except ValueError as exc:
        fail(f"{where}.path", f"malformed template {path!r}: {exc}")
    public = route.get("public", False)
    if not isinstance(public, bool):
        fail(f"{where}.public", "public must be true or false")
    scope = route.get("scope")
    if "scope" in route:
        if public:
            fail(f"{where}.public", "a route has either 'scope' or 'public: true', not both")
        if not isinstance(scope, str):
            fail(f"{where}.scope", "scope must be a string")
        if scope not in permissions:
            fail(f"{where}.scope", f"unknown scope {scope!r}")
    elif not public:
        fail(where, "needs 'scope: <scope>' or 'public: true'", line=line)
    cost = route.get("cost", 1)
    if isinstance(cost, bool) or not isinstance(cost, int) or not 1 <= cost <= MAX_COST:
        fail(f"{where}.cost", f"cost must be an integer from 1 to {MAX_COST:_}, not {cost!r}")
    if public and "cost" in route:
        fail(f"{where}.cost", "a public route has no key whose limits it could spend")
    return Rule(method, path, scope, public, line, cost)


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """Read and parse a scopes file; an unreadable file is a ScopesError too."""
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ScopesError(filename, None, "", f"cannot read: {exc.strerror or exc}") from None
    return parse_rules(data, filename)
