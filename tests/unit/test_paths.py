"""Request-target canonicalization: the accept/reject table and its properties."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.paths import MAX_PATH_LENGTH, MAX_SEGMENTS, SEGMENT_SAFE, NotCanonical, Target, canonicalize

REJECTED = [
    # not origin-form
    ("empty", ""),
    ("asterisk", "*"),
    ("absolute-form", "http://example.com/v1/tasks"),
    ("absolute-form-https", "https://example.com/"),
    ("authority-form", "example.com:443"),
    ("relative", "v1/tasks"),
    ("dot-relative", "./v1/tasks"),
    ("query-only", "?x=1"),
    # dot segments, raw and encoded
    ("dot", "/v1/./tasks"),
    ("dotdot", "/v1/../admin"),
    ("leading-dotdot", "/../admin"),
    ("leading-dot", "/./v1"),
    ("trailing-dot", "/v1/tasks/."),
    ("trailing-dotdot", "/v1/tasks/.."),
    ("dotdot-then-slash", "/v1/tasks/../"),
    ("enc-dot", "/v1/%2e/tasks"),
    ("enc-dotdot-lower", "/v1/%2e%2e/admin"),
    ("enc-dotdot-upper", "/v1/%2E%2E/admin"),
    ("enc-dotdot-mixed", "/v1/%2E%2e/admin"),
    ("half-enc-dotdot", "/v1/.%2E/x"),
    ("half-enc-dotdot-2", "/v1/%2e./x"),
    ("enc-dotdot-at-end", "/v1/tasks/%2e%2e"),
    # encoded separators
    ("enc-slash-upper", "/v1/tasks%2Fadmin"),
    ("enc-slash-lower", "/v1/tasks%2fadmin"),
    ("enc-slash-alone", "/v1/%2F/admin"),
    ("enc-dotdot-slash", "/v1/%2e%2e%2fadmin"),
    ("enc-backslash-upper", "/v1/tasks%5Cadmin"),
    ("enc-backslash-lower", "/v1/tasks%5c..%5cadmin"),
    ("raw-backslash", "/v1\\tasks"),
    ("raw-backslash-dotdot", "/v1/..\\admin"),
    # empty segments
    ("double-slash", "/v1//tasks"),
    ("triple-slash", "/v1///tasks"),
    ("leading-double-slash", "//v1/tasks"),
    ("only-double-slash", "//"),
    ("double-trailing-slash", "/v1/tasks//"),
    ("protocol-relative", "//evil.example/x"),
    # NUL and controls, raw and encoded
    ("raw-nul", "/v1/ta\x00sks"),
    ("enc-nul", "/v1/ta%00sks"),
    ("enc-lf", "/v1/tasks%0a"),
    ("enc-LF-upper", "/v1/tasks%0A"),
    ("enc-cr", "/v1/tasks%0d"),
    ("enc-del", "/v1/tasks%7f"),
    ("enc-tab", "/v1/tasks%09"),
    ("enc-esc", "/v1/tasks%1b"),
    ("raw-tab", "/v1/ta\tsks"),
    ("raw-space", "/v1/ta sks"),
    ("raw-lf", "/v1/tasks\nX"),
    ("raw-cr", "/v1/tasks\r"),
    ("raw-del", "/v1/tasks\x7f"),
    ("raw-space-in-query", "/v1/tasks?x=a b"),
    ("raw-ctrl-in-query", "/v1/tasks?x=\x01"),
    # matrix parameters
    ("raw-semicolon", "/v1/tasks;jsessionid=1"),
    ("raw-semicolon-dotdot", "/v1/..;/admin"),
    ("enc-semicolon-upper", "/v1/tasks%3Bx"),
    ("enc-semicolon-lower", "/v1/tasks%3bx"),
    # fragments
    ("fragment", "/v1/tasks#frag"),
    ("fragment-in-query", "/v1/tasks?x=1#frag"),
    ("bare-hash", "/#"),
    # malformed escapes
    ("lone-percent", "/v1/%"),
    ("percent-at-end", "/v1/tasks%"),
    ("percent-non-hex", "/v1/%G1"),
    ("percent-one-digit", "/v1/%1"),
    ("percent-one-digit-then-slash", "/v1/%1/x"),
    ("percent-hex-nonhex", "/v1/%2G"),
    ("double-percent", "/v1/%%30"),
    # invalid UTF-8
    ("overlong-slash", "/v1/%C0%AF"),
    ("overlong-dotdot", "/v1/%C0%AE%C0%AE/admin"),
    ("overlong-3byte-slash", "/v1/%E0%80%AF"),
    ("lone-surrogate", "/v1/%ED%A0%80"),
    ("bad-continuation", "/v1/%C3%28"),
    ("truncated", "/v1/caf%C3"),
    ("latin1-byte", "/v1/caf%E9"),
    ("above-unicode", "/v1/%F4%90%80%80"),
    ("ff-byte", "/v1/%FF"),
    # non-ASCII in the raw target
    ("raw-non-ascii", "/v1/tâsks"),
    ("raw-non-ascii-query", "/v1/tasks?q=é"),
    ("raw-surrogate-escape", "/v1/caf\udcc3\udca9"),
    ("raw-fullwidth-dot", "/v1/\uff0e\uff0e/admin"),
    ("raw-nbsp", "/v1/\u00a0"),
    # look-alikes of "/", "\\" and "." (NFKC, best-fit and transliterating decoders map them)
    ("fullwidth-solidus", "/v1/tasks%EF%BC%8F42"),
    ("fullwidth-solidus-lower", "/v1/tasks%ef%bc%8f42"),
    ("division-slash", "/v1/tasks%E2%88%95admin"),
    ("fraction-slash", "/v1/tasks%E2%81%84admin"),
    ("fullwidth-full-stops", "/v1/%EF%BC%8E%EF%BC%8E/admin"),
    ("one-dot-leaders", "/v1/%E2%80%A4%E2%80%A4/admin"),
    ("two-dot-leader", "/v1/%E2%80%A5/admin"),
    ("small-full-stop", "/v1/%EF%B9%92%EF%B9%92"),
    ("fullwidth-backslash", "/v1/tasks%EF%BC%BCadmin"),
    ("set-minus", "/v1/tasks%E2%88%96admin"),
    ("small-reverse-solidus", "/v1/tasks%EF%B9%A8admin"),
    ("big-solidus", "/v1/tasks%E2%A7%B8admin"),
    ("ideographic-full-stop", "/v1/%E3%80%82%E3%80%82"),
    ("halfwidth-ideographic-stop", "/v1/%EF%BD%A1"),
    ("ellipsis", "/v1/%E2%80%A6"),
    ("fullwidth-semicolon", "/v1/tasks%EF%BC%9Bx"),
    ("fullwidth-percent", "/v1/tasks/%EF%BC%852e"),
    ("fullwidth-letters", "/v1/%EF%BD%94%EF%BD%81%EF%BD%93%EF%BD%8B%EF%BD%93"),
    ("one-fullwidth-letter", "/v1/tasks/42/%EF%BD%83omplete"),
    ("ligature", "/v1/%EF%AC%81le"),
    ("nbsp", "/v1/a%C2%A0b"),
    ("ideographic-space", "/v1/a%E3%80%80b"),
    ("look-alike-after-ascii", "/v1/tasks/42x%EF%BC%8F"),
    # C1 controls, line separators and bidi controls, encoded
    *[(f"c1-{n:02x}", f"/v1/tasks/a%C2%{n:02X}b") for n in (0x80, 0x85, 0x8D, 0x9B, 0x9F)],
    ("line-separator", "/v1/tasks/a%E2%80%A8b"), ("paragraph-separator", "/v1/tasks/%E2%80%A9"),
    ("bidi-override-rlo", "/v1/tasks/%E2%80%AEtxt.exe"), ("bidi-embedding-lre", "/v1/tasks/%E2%80%AAx"),
    ("bidi-isolate-rli", "/v1/tasks/x%E2%81%A7"), ("bidi-pop-isolate", "/v1/%E2%81%A9tasks"),
    # limits
    ("too-long", "/" + "a" * MAX_PATH_LENGTH),
    ("too-long-after-encoding", "/" + '"' * 3000),
    ("too-many-segments", "/a" * (MAX_SEGMENTS + 1)),
    ("too-many-with-trailing-slash", "/a" * MAX_SEGMENTS + "/"),
]


@pytest.mark.parametrize("raw", [r for _, r in REJECTED], ids=[i for i, _ in REJECTED])
def test_rejected(raw: str) -> None:
    with pytest.raises(NotCanonical) as info:
        canonicalize(raw)
    reason = info.value.reason
    assert reason and len(reason) < 60
    assert str(info.value) == reason
    if len(raw) > 3:
        assert raw not in reason


ACCEPTED = [
    ("root", "/", (), "/", ""),
    ("root-query", "/?a=1", (), "/", "a=1"),
    ("plain", "/v1/tasks", ("v1", "tasks"), "/v1/tasks", ""),
    ("trailing-slash", "/v1/tasks/", ("v1", "tasks", ""), "/v1/tasks/", ""),
    ("encoded-letter", "/v1/%74asks", ("v1", "tasks"), "/v1/tasks", ""),
    ("encoded-unreserved", "/v1/%7Euser%2D%5F", ("v1", "~user-_"), "/v1/~user-_", ""),
    ("utf8", "/v1/tasks/caf%C3%A9", ("v1", "tasks", "café"), "/v1/tasks/caf%C3%A9", ""),
    ("utf8-lower-hex", "/v1/tasks/caf%c3%a9", ("v1", "tasks", "café"), "/v1/tasks/caf%C3%A9", ""),
    ("space", "/v1/tasks/a%20b", ("v1", "tasks", "a b"), "/v1/tasks/a%20b", ""),
    ("query", "/v1/tasks?x=1&y=%2F..", ("v1", "tasks"), "/v1/tasks", "x=1&y=%2F.."),
    ("empty-query", "/v1/tasks?", ("v1", "tasks"), "/v1/tasks", ""),
    ("query-bad-percent", "/v1/tasks?x=%zz&y=%", ("v1", "tasks"), "/v1/tasks", "x=%zz&y=%"),
    ("query-with-question", "/v1/tasks?a=?b/c", ("v1", "tasks"), "/v1/tasks", "a=?b/c"),
    ("query-semicolon-backslash", "/v1?a;b\\c", ("v1",), "/v1", "a;b\\c"),
    ("sub-delims-kept", "/v1/a!$&'()*+,=:@b", ("v1", "a!$&'()*+,=:@b"), "/v1/a!$&'()*+,=:@b", ""),
    ("encoded-sub-delims-decoded", "/v1/%21%24%3A%40", ("v1", "!$:@"), "/v1/!$:@", ""),
    ("percent-literal", "/v1/100%25", ("v1", "100%"), "/v1/100%25", ""),
    ("encoded-question", "/v1/a%3Fb", ("v1", "a?b"), "/v1/a%3Fb", ""),
    ("encoded-hash", "/v1/a%23b", ("v1", "a#b"), "/v1/a%23b", ""),
    ("raw-quote-reencoded", '/v1/a"b', ("v1", 'a"b'), "/v1/a%22b", ""),
    ("raw-brackets-reencoded", "/v1/[a]{b}|^`<>", ("v1", "[a]{b}|^`<>"),
     "/v1/%5Ba%5D%7Bb%7D%7C%5E%60%3C%3E", ""),
    ("three-dots", "/v1/...", ("v1", "..."), "/v1/...", ""),
    ("dot-prefix", "/v1/.well-known", ("v1", ".well-known"), "/v1/.well-known", ""),
    ("dotdot-prefix", "/v1/..x", ("v1", "..x"), "/v1/..x", ""),
    ("encoded-4byte", "/v1/%F0%9F%98%80", ("v1", "\U0001f600"), "/v1/%F0%9F%98%80", ""),
    # non-ASCII that no decoder reads as ASCII: letters, marks, dashes, currency
    ("cyrillic", "/v1/%D1%82asks", ("v1", "\u0442asks"), "/v1/%D1%82asks", ""),
    ("cjk", "/v1/%E4%BB%BB%E5%8A%A1", ("v1", "\u4efb\u52a1"), "/v1/%E4%BB%BB%E5%8A%A1", ""),
    ("combining-mark", "/v1/e%CC%81", ("v1", "e\u0301"), "/v1/e%CC%81", ""),
    ("en-dash", "/v1/a%E2%80%93b", ("v1", "a\u2013b"), "/v1/a%E2%80%93b", ""),
    ("euro", "/v1/%E2%82%AC5", ("v1", "\u20ac5"), "/v1/%E2%82%AC5", ""),
    ("max-length", "/" + "a" * (MAX_PATH_LENGTH - 1), ("a" * (MAX_PATH_LENGTH - 1),),
     "/" + "a" * (MAX_PATH_LENGTH - 1), ""),
    ("max-segments", "/a" * MAX_SEGMENTS, ("a",) * MAX_SEGMENTS, "/a" * MAX_SEGMENTS, ""),
]


@pytest.mark.parametrize(
    ("raw", "segments", "path", "query"), [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED]
)
def test_accepted(raw: str, segments: tuple[str, ...], path: str, query: str) -> None:
    target = canonicalize(raw)
    assert target == Target(segments=segments, path=path, query=query)
    assert canonicalize(target.path) == Target(segments=segments, path=path, query="")
    suffix = "?" + query if query else ""
    assert canonicalize(target.path + suffix) == target


def test_target_is_frozen() -> None:
    target = canonicalize("/v1")
    with pytest.raises(AttributeError):
        target.path = "/admin"  # type: ignore[misc]


def test_non_string_is_rejected() -> None:
    with pytest.raises(NotCanonical):
        canonicalize(b"/v1/tasks")  # type: ignore[arg-type]


def test_invalid_path_is_a_value_error() -> None:
    assert issubclass(NotCanonical, ValueError)


# --- properties -----------------------------------------------------------------------------

def _no_look_alike(char: str) -> bool:
    """Outside the look-alike rule: ASCII, or not Sm/Po and nothing ASCII once NFKC-folded."""
    return char.isascii() or (unicodedata.category(char) not in ("Sm", "Po")
                              and not any(c.isascii() for c in unicodedata.normalize("NFKC", char)))


_segment_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"),
                           exclude_characters="/\\;\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069").filter(
        _no_look_alike),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..") and unicodedata.normalize("NFKC", s) not in (".", ".."))


@st.composite
def _raw_paths(draw: st.DrawFn) -> tuple[str, tuple[str, ...]]:
    """A raw path built from random segment text, encoded in one of several equivalent ways."""
    segments = draw(st.lists(_segment_text, min_size=0, max_size=8))
    if segments and draw(st.booleans()):
        segments.append("")  # trailing slash
    encoded = []
    for seg in segments:
        style = draw(st.sampled_from(["minimal", "all", "lower"]))
        if style == "minimal":
            text = quote(seg, safe=SEGMENT_SAFE)
        elif style == "all":
            text = "".join(f"%{b:02X}" for b in seg.encode())
        else:
            text = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(seg, safe=""))
        encoded.append(text)
    return "/" + "/".join(encoded), tuple(segments)


_queries = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"))


@given(_raw_paths(), _queries, st.booleans())
@settings(max_examples=400)
def test_canonicalize_is_idempotent(raw_and_segments: tuple[str, tuple[str, ...]], query: str,
                                    with_query: bool) -> None:
    raw, segments = raw_and_segments
    raw_target = raw + ("?" + query if with_query else "")
    target = canonicalize(raw_target)
    assert target.segments == segments
    assert target.query == (query if with_query else "")
    assert canonicalize(target.path) == Target(segments=target.segments, path=target.path, query="")
    assert canonicalize(target.path + ("?" + target.query if with_query else "")) == target


_tricky = st.sampled_from([
    "/", "//", ".", "..", "%", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%3b", "%3B", "%00", "%0a",
    "%25", "%C0", "%AE", "%AF", "%C3%A9", "\\", ";", "?", "#", "a", "v1", "tasks", " ", "\t", "é",
    "e", "2", "f", "F", "5", "c", "0",
])
_arbitrary = st.one_of(
    st.text(max_size=40),
    st.lists(_tricky, max_size=20).map("".join),
    st.lists(_tricky, max_size=20).map(lambda parts: "/" + "".join(parts)),
)


@given(_arbitrary)
@settings(max_examples=1000)
@example("/v1/.%2E/x")
@example("/v1/%2e%2E%2f")
@example("/%2e")
def test_accepted_paths_are_unambiguous(raw: str) -> None:
    try:
        target = canonicalize(raw)
    except NotCanonical:
        return
    path = target.path
    assert path.startswith("/")
    assert "//" not in path
    assert ";" not in path and "\\" not in path
    assert "%2f" not in path.lower() and "%5c" not in path.lower()
    assert "%2e" not in path.lower()  # "." is unreserved: always forwarded raw, never encoded
    parts = path[1:].split("/")
    assert "." not in parts and ".." not in parts
    assert "." not in target.segments and ".." not in target.segments
    assert "" not in target.segments[:-1]
    assert all(c.isascii() and c.isprintable() and c != " " for c in path)
    assert canonicalize(path).segments == target.segments
