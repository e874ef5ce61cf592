"""Hypothesis properties of the pure core the gateway authorizes with, on realistic targets.

Targets come from a grammar that fills the templates of the shipped scopes.yaml (and a rule set
with deliberately overlapping extras) with random segments, mixes in real route literals, and
percent-encodes every character in several equivalent ways, so the properties exercise real
rules rather than random noise. tests/unit/test_paths.py and test_scopes.py hold the tables and
the properties over random text and synthetic rule sets; these go across both modules.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from admin_api.schemas import NAME_FORBIDDEN, NAME_PATTERN, NAME_SPACE
from gateway.paths import SEGMENT_SAFE, NotCanonical, canonicalize
from gateway.scopes import Match, WrongMethod, NoRoute, Rule, RuleSet, load_rules
from gateway.validation import InvalidField, key_name
from tests.support import SCOPES

SHIPPED = load_rules(SCOPES)
# Overlaps the shipped file lacks: params and catch-alls beside literals at every depth.
EXTRA = [
    ("GET", "/v1/{collection}"),
    ("GET", "/v1/{collection}/{item}"),
    ("DELETE", "/v1/{rest:path}"),
    ("GET", "/{version}/tasks/{task_id}/complete"),
    ("POST", "/v1/reservations/upcoming/{tail:path}"),
    ("GET", "/v1/properties/{property_id}/documents/index"),
    ("PUT", "/v1/{collection}/{item}/{sub:path}"),
    ("HEAD", "/v1/tasks/{task_id}"),
]
OVERLAPPING = RuleSet(
    SHIPPED.permissions,
    [*SHIPPED.rules, *(Rule(m, t, "tasks:read", False, 1000 + i) for i, (m, t) in enumerate(EXTRA))],
    source="shipped+extra",
)
RULESETS = {"shipped": SHIPPED, "overlapping": OVERLAPPING}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
LITERALS = sorted({s for r in OVERLAPPING.rules for s in r.template.split("/") if s and "{" not in s})
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- the grammar ---------------------------------------------------------------------------

# Characters canonicalize takes raw in a path; everything else must be percent-encoded.
RAW_OK = frozenset(chr(c) for c in range(0x21, 0x7F)) - set("#?/\\;%")
# Decoded characters no segment may hold (they would split or end the path for some backend).
# The published rule: separators, ";", C0 and C1 controls, DEL, line/paragraph separators, bidi controls.
FORBIDDEN_DECODED = re.compile(r"[\x00-\x1f\x7f-\x9f/\\;\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def look_alike(text: str) -> bool:
    """The published look-alike rule (docs/security.md, Threat model): a non-ASCII character whose NFKC
    form holds ASCII, or that is a math symbol (Sm) or "other" punctuation (Po); or a segment
    whose NFKC form is a dot segment or holds a forbidden character."""
    folded = unicodedata.normalize("NFKC", text)
    return (folded in (".", "..") or bool(FORBIDDEN_DECODED.search(folded)) or any(
        not c.isascii() and (unicodedata.category(c) in ("Sm", "Po")
                             or any(a.isascii() for a in unicodedata.normalize("NFKC", c)))
        for c in text))


_random_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=10,
)
segment_text = st.one_of(
    st.sampled_from(LITERALS),
    st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
    st.sampled_from(["...", ".well-known", "a.b", "..x", "x..", "%", "100%", "a b", "é", "\u202e", "~user", "?",
                     "#", "[]", '"', "'", "@", ":", "+", "=", "&", "*", "!", "$", "(x)", "\U0001f600"]),
    _random_text,
).filter(lambda s: s not in (".", "..") and not FORBIDDEN_DECODED.search(s) and not look_alike(s))


@st.composite
def encoded(draw: st.DrawFn, text: str) -> str:
    """One of the many raw spellings of a decoded segment."""
    style = draw(st.sampled_from(["minimal", "upper", "lower", "mixed"]))
    if style == "minimal":
        return quote(text, safe=SEGMENT_SAFE)
    out = []
    for ch in text:
        if style == "mixed" and ch in RAW_OK and draw(st.booleans()):
            out.append(ch)
            continue
        lower = style == "lower" or (style == "mixed" and draw(st.booleans()))
        out.append("".join(f"%{b:02x}" if lower else f"%{b:02X}" for b in ch.encode("utf-8")))
    return "".join(out)


def _template_parts(template: str) -> list[tuple[str, str]]:
    """Oracle's own template parser: ("lit", text), ("param", name) or ("rest", name)."""
    parts = []
    for part in template[1:].split("/") if template != "/" else []:
        m = re.fullmatch(r"\{(\w+)(:path)?\}", part)
        if m is None:
            parts.append(("lit", part))
        else:
            parts.append(("rest" if m[2] else "param", m[1]))
    return parts


@st.composite
def decoded_paths(draw: st.DrawFn) -> tuple[tuple[str, ...], str]:
    """Decoded segments and a method: mostly a real template filled in and its rule's method (or
    another), else real literals mixed with random segments."""
    method = draw(st.sampled_from(METHODS))
    # (Hypothesis leans towards the first choice; the template is the one wanted most.)
    if draw(st.sampled_from([True, True, True, False])):
        rule = draw(st.sampled_from(OVERLAPPING.rules))
        if draw(st.sampled_from([True, True, False])):
            method = rule.method
        segments: list[str] = []
        for kind, text in _template_parts(rule.template):
            if kind == "lit":
                segments.append(text)
            elif kind == "param":
                segments.append(draw(segment_text))
            else:
                segments += draw(st.lists(segment_text, min_size=1, max_size=3))
    else:
        segments = draw(st.lists(segment_text, max_size=7))
    return tuple(segments), method


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, tuple[str, ...]]:
    """A method and a raw origin-form target that canonicalize must accept, with the segments
    the target stands for."""
    segments, method = draw(decoded_paths())
    if segments and draw(st.sampled_from([False] * 9 + [True])):
        segments = (*segments, "")  # a trailing slash: accepted, matches nothing
    raw = "/" + "/".join([draw(encoded(seg)) for seg in segments])
    if draw(st.booleans()):
        raw += "?" + draw(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                                         exclude_characters="#"), max_size=20))
    return method, raw, segments


def targets() -> st.SearchStrategy[tuple[str, tuple[str, ...]]]:
    return requests().map(lambda r: r[1:])


# ---- canonicalization ------------------------------------------------------------------------

@PROPERTY
@given(targets())
@example(("/v1/reservations/%75pcoming", ("v1", "reservations", "upcoming")))
@example(("/v1/properties/p/documents/a%2Eb/c", ("v1", "properties", "p", "documents", "a.b", "c")))
def test_every_spelling_canonicalizes_to_its_segments_and_is_idempotent(target):
    raw, segments = target
    t = canonicalize(raw)
    assert t.segments == segments
    again = canonicalize(t.path)
    assert (again.segments, again.path, again.query) == (t.segments, t.path, "")
    assert canonicalize(t.path + ("?" + t.query if t.query else "")) == t


@PROPERTY
@given(targets())
def test_decoding_then_re_encoding_keeps_the_segment_count(target):
    raw, _ = target
    t = canonicalize(raw)
    raw_path = raw.partition("?")[0]
    count = 0 if t.path == "/" else t.path.count("/")
    assert len(t.segments) == count == (0 if raw_path == "/" else raw_path.count("/"))
    # A backend that decodes each segment, or (wrongly) the whole path before splitting, sees the
    # same segments: no "/" can appear by decoding.
    assert tuple(unquote(s) for s in t.path[1:].split("/")) == t.segments or t.path == "/"
    assert (unquote(t.path).count("/") if t.segments else 0) == count
    assert "/".join(quote(s, safe=SEGMENT_SAFE) for s in t.segments) == t.path[1:]


@PROPERTY
@given(requests(), st.sampled_from(list(RULESETS)))
def test_the_forwarded_path_is_authorized_under_the_same_rule(request, which):
    rules = RULESETS[which]
    method, raw, _ = request
    t = canonicalize(raw)
    forwarded = canonicalize(t.path)  # what the backend receives, read back by the gateway
    decoded_by_backend = tuple(unquote(s) for s in t.path[1:].split("/")) if t.path != "/" else ()
    found = rules.match(method, t.segments)
    for other in (forwarded.segments, decoded_by_backend):
        again = rules.match(method, other)
        assert type(again) is type(found)
        if isinstance(found, Match):
            assert again.rule is found.rule and dict(again.params) == dict(found.params)
        else:
            assert again == found


def _insert(draw: st.DrawFn, raw_segments: list[str], piece: str) -> str:
    """Put ``piece`` somewhere inside one segment of the path."""
    i = draw(st.integers(0, len(raw_segments) - 1))
    seg = raw_segments[i]
    # Never inside a %XX escape, so the piece stays what it is.
    cuts = [k for k in range(len(seg) + 1) if not re.search(r"%[0-9A-Fa-f]?$", seg[:k])]
    k = draw(st.sampled_from(cuts))
    raw_segments[i] = seg[:k] + piece + seg[k:]
    return "/" + "/".join(raw_segments)


DOT_SEGMENTS = [".", "..", "%2e", "%2E", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2E."]
INSIDE_A_SEGMENT = ["%2f", "%2F", "%5c", "%5C", "\\", ";", "%3b", "%3B", "#", "%00", "\x00", "%0a", "%0D",
                    "%09", "%1f", "%7f", "%7F", "\t", " ", "\r", "\n", "\x7f", "é", "\u202e", "\uff0e", "\u3000",
                    "%C0%AE", "%C0%AF", "%ED%A0%80", "%FF", "%G0", "%%"]


# Any character the look-alike rule refuses, drawn from all of Unicode (not from a list).
LOOK_ALIKE_CHARACTERS = st.characters(codec="utf-8", min_codepoint=0x80).filter(look_alike)


@st.composite
def poisoned(draw: st.DrawFn) -> str:
    raw, _ = draw(targets())
    path, sep, query = raw.partition("?")
    segments = path[1:].split("/") if path != "/" else [""]
    kind = draw(st.sampled_from(["dot", "inside", "look-alike", "empty", "fragment", "query-control"]))
    if kind == "look-alike":  # percent-encoded, upper or lower case hex, anywhere in a segment
        char = draw(LOOK_ALIKE_CHARACTERS)
        hex_case = draw(st.sampled_from(["%{:02X}", "%{:02x}"]))
        bad = _insert(draw, segments, "".join(hex_case.format(b) for b in char.encode()))
    elif kind == "dot":
        segments.insert(draw(st.integers(0, len(segments))), draw(st.sampled_from(DOT_SEGMENTS)))
        bad = "/" + "/".join(segments)
    elif kind == "inside":
        bad = _insert(draw, segments, draw(st.sampled_from(INSIDE_A_SEGMENT)))
    elif kind == "empty":  # "//" anywhere but as the single trailing slash
        segments.insert(draw(st.integers(0, max(len(segments) - 1, 0))), "")
        bad = "/" + "/".join(segments)
        assume("//" in bad or bad.startswith("//"))
    elif kind == "fragment":
        return raw + "#" + draw(st.sampled_from(["", "x", "/../admin"]))
    else:
        return path + "?" + query + draw(st.sampled_from(["\x00", "\n", " ", "\x7f", "é"]))
    return bad + sep + query


@PROPERTY
@given(poisoned())
@example("/v1/tasks/%2e%2e/admin")
@example("/v1/tasks/..;/admin")
@example("/v1/tasks%2F..%2Fadmin")
@example("/v1/tasks/%EF%BC%8F..%EF%BC%8Fadmin")
@example("/v1/tasks/%e2%88%95admin")
def test_anything_ambiguous_anywhere_is_rejected(raw):
    with pytest.raises(NotCanonical):
        canonicalize(raw)


# Every assigned character but ASCII and private use (unassigned and private-use code points
# have no NFKC mapping and no category the rule looks at).
NON_ASCII = [chr(c) for c in range(0x80, sys.maxunicode + 1)
             if unicodedata.category(chr(c)) not in ("Cn", "Co", "Cs")]


def test_every_character_of_unicode_is_judged_by_the_look_alike_rule():
    """SECURITY: over all assigned characters, a percent-encoded character alone in a segment is refused
    exactly when the published rule says so; in particular every character whose NFKC form
    holds "/", "\\" or "." (whatever code point it is) never reaches a backend."""
    wrong = []
    for char in NON_ASCII:
        raw = "/v1/tasks/" + quote(char, safe="")
        try:
            canonicalize(raw)
            refused = False
        except NotCanonical:
            refused = True
        if refused != look_alike(char):
            wrong.append(f"U+{ord(char):04X}")
    assert not wrong, wrong[:20]
    separators = [c for c in NON_ASCII if set(unicodedata.normalize("NFKC", c)) & set("/\\.")]
    assert len(separators) > 20 and all(look_alike(c) for c in separators)


# ---- the matcher against a brute-force oracle -----------------------------------------------

KIND_ORDER = {"lit": 0, "param": 1, "rest": 2}


def _matches(parts: list[tuple[str, str]], segs: tuple[str, ...]) -> bool:
    if "" in segs:
        return False
    if parts and parts[-1][0] == "rest":
        fixed = parts[:-1]
        if len(segs) <= len(fixed):
            return False
    else:
        fixed = parts
        if len(segs) != len(fixed):
            return False
    return all(kind != "lit" or text == seg for (kind, text), seg in zip(fixed, segs[:len(fixed)], strict=True))


def oracle(rules: RuleSet, method: str, segs: tuple[str, ...]):
    """Every rule checked one by one: the most specific matching template that has the method
    (HEAD falls back to GET per template), else 405 with every matching template's methods, else 404."""
    by_template: dict[str, dict[str, Rule]] = {}
    for rule in rules.rules:
        by_template.setdefault(rule.template, {})[rule.method] = rule
    matching = {t: ms for t, ms in by_template.items() if _matches(_template_parts(t), segs)}
    candidates = []
    for template, methods in matching.items():
        rule = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if rule is not None:
            # Same shape, different templates: a rule for the method itself beats HEAD's GET fallback.
            kinds = tuple(KIND_ORDER[k] for k, _ in _template_parts(template))
            candidates.append(((kinds, rule.method != method), rule))
    if candidates:
        candidates.sort(key=lambda c: c[0])
        assert len(candidates) == 1 or candidates[0][0] != candidates[1][0], "ambiguous rules loaded"
        return candidates[0][1]
    allow = {m for methods in matching.values() for m in methods}
    if "GET" in allow:
        allow.add("HEAD")
    return WrongMethod(tuple(sorted(allow))) if allow else NoRoute()


@PROPERTY
@given(requests(), st.sampled_from(list(RULESETS)))
@example(("HEAD", "/v1/tasks/42", ()), "overlapping")
@example(("GET", "/v1/reservations/upcoming", ()), "overlapping")
@example(("DELETE", "/v1/reservations/upcoming", ()), "overlapping")
@example(("GET", "/v2/tasks/1/complete", ()), "overlapping")
@example(("GET", "/v1/properties/p1/documents/index", ()), "overlapping")
@example(("PUT", "/v1/properties/p1/documents/a/b", ()), "overlapping")
def test_the_matcher_picks_what_the_oracle_picks(request, which):
    rules = RULESETS[which]
    method, raw, _ = request
    segs = canonicalize(raw).segments
    found, expected = rules.match(method, segs), oracle(rules, method, segs)
    if isinstance(expected, Rule):
        assert isinstance(found, Match) and found.rule is expected, (found, expected)
        # The params put back into the template give the segments again.
        rebuilt = []
        for kind, name in _template_parts(expected.template):
            rebuilt += [name] if kind == "lit" else [found.params[name]] if kind == "param" else \
                found.params[name].split("/")
        assert tuple(rebuilt) == segs
    else:
        assert found == expected


@PROPERTY
@given(st.data())
def test_a_filled_in_template_is_matched_by_it_or_by_something_more_specific(data):
    rules = data.draw(st.sampled_from(list(RULESETS.values())))
    rule = data.draw(st.sampled_from(rules.rules))
    segments: list[str] = []
    for kind, text in _template_parts(rule.template):
        segments += [text] if kind == "lit" else data.draw(
            st.lists(segment_text, min_size=1, max_size=1 if kind == "param" else 3))
    raw = "/" + "/".join(data.draw(encoded(s)) for s in segments)
    found = rules.match(rule.method, canonicalize(raw).segments)
    assert isinstance(found, Match)
    mine = tuple(KIND_ORDER[k] for k, _ in _template_parts(rule.template))
    theirs = tuple(KIND_ORDER[k] for k, _ in _template_parts(found.rule.template))
    assert found.rule is rule or theirs < mine, (rule, found.rule)


# ---- the admin API's name rule and the pattern its OpenAPI document publishes ----------------

EVERY_CHARACTER = "".join(map(chr, range(sys.maxunicode + 1)))


def test_the_published_character_classes_are_unicode_s():
    """NAME_SPACE is what str.strip() trims; NAME_FORBIDDEN is Cc, Zl, Zp and the bidi controls."""
    assert set(re.findall(f"[{NAME_SPACE}]", EVERY_CHARACTER)) == {c for c in EVERY_CHARACTER if c.isspace()}
    forbidden = {c for c in EVERY_CHARACTER if unicodedata.category(c) in ("Cc", "Zl", "Zp")}
    forbidden |= {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
    assert set(re.findall(f"[{NAME_FORBIDDEN}]", EVERY_CHARACTER)) == forbidden


_name_chars = st.one_of(
    st.characters(codec="utf-8", exclude_categories=("Cs",)),
    st.sampled_from([" ", "\t", "\n", "\x0b", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u2029", "\u202e",
                     "\u2066", "\u3000", "\u200b", "\ufeff", "\x00", "\x7f", "\x9b", "a", "é"]),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(_name_chars, max_size=12),
                 st.tuples(st.text(_name_chars, max_size=3), st.integers(95, 105), st.text(_name_chars, max_size=3))
                 .map(lambda t: t[0] + "x" * t[1] + t[2])))
@example("x" * 100)
@example(" " + "x" * 100 + "\u3000")
@example("x" * 101)
@example("a\n")
@example("\x00")
def test_the_name_rule_is_exactly_the_published_pattern(name):
    try:
        key_name(name)
        accepted = True
    except InvalidField:
        accepted = False
    # JSON Schema "pattern" is a search; the pattern is anchored itself.
    assert accepted == (re.search(NAME_PATTERN, name) is not None), repr(name)


# ---- the fast path of canonicalize ---------------------------------------------------------------

def _slow_or_error(raw: str):
    from gateway.paths import _canonicalize

    try:
        return _canonicalize(raw)
    except NotCanonical:
        return "refused"


def _fast_or_error(raw: str):
    try:
        return canonicalize(raw)
    except NotCanonical:
        return "refused"


@PROPERTY
@given(st.one_of(
    requests().map(lambda r: r[1]),
    st.text(alphabet=st.sampled_from("/.-_~!$&'()*+,=:@aZ09%;?#\\ \t\x00é"), max_size=30).map(lambda s: "/" + s),
    st.text(max_size=30),
))
@example("/v1/tasks")
@example("/v1/./tasks")
@example("/v1/.../x")
@example("/v1/tasks/")
@example("/v1/tasks//")
@example("/v1/tasks?a=%41#x")
@example("/")
def test_the_fast_path_agrees_with_the_full_canonicalization(raw):
    """SECURITY: the plain-path shortcut (gateway/paths.py) answers exactly what the full
    validation answers, for accepted and refused targets alike."""
    assert _fast_or_error(raw) == _slow_or_error(raw)
