"""Key format: generation, parsing, checksum, derived id and display prefix."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import keys


def test_generated_key_matches_documented_regex_and_parses():
    key = keys.generate_key()
    assert len(key) == keys.KEY_LEN == 40
    assert re.fullmatch(keys.KEY_PATTERN.replace(r"\b", ""), key)
    parsed = keys.parse_key(key)
    assert parsed.prefix == key[:10] and parsed.prefix.startswith("sop_")
    assert parsed.key_id.startswith("key_") and len(parsed.key_id) == 20
    assert len(parsed.digest) == 64 and key not in parsed.digest


def test_keys_are_unique_and_ids_stable():
    batch = {keys.generate_key() for _ in range(2000)}
    assert len(batch) == 2000
    key = next(iter(batch))
    assert keys.parse_key(key) == keys.parse_key(key)
    assert len({keys.parse_key(k).key_id for k in batch}) == 2000


def test_hidden_part_keeps_at_least_128_bits():
    import math

    hidden = keys.RANDOM_LEN - keys.DISPLAY_RANDOM_CHARS
    assert hidden * math.log2(62) >= 128
    assert keys.RANDOM_LEN * math.log2(62) >= 160


GOOD = keys.generate_key()


def _flip(ch: str) -> str:
    return "a" if ch != "a" else "b"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        GOOD[:-1],
        GOOD + "a",
        "sk_" + GOOD[4:] + "x",
        "SOP_" + GOOD[4:],
        GOOD[:10] + "-" + GOOD[11:],
        GOOD[:10] + "é" + GOOD[11:],
        GOOD[:-1] + _flip(GOOD[-1]),  # checksum off by one char
        GOOD[:8] + _flip(GOOD[8]) + GOOD[9:],  # body changed, checksum kept
        " " + GOOD[1:],
    ],
    ids=["empty", "short", "long", "prefix", "case", "alphabet", "unicode", "checksum", "body", "space"],
)
def test_rejects_malformed(bad):
    with pytest.raises(keys.InvalidKeyFormat):
        keys.parse_key(bad)


@given(st.text(max_size=60))
def test_random_strings_never_parse_unless_well_formed(text):
    try:
        keys.parse_key(text)
    except keys.InvalidKeyFormat:
        return
    assert text.startswith("sop_") and len(text) == 40  # only a real key gets here


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_base62_round_trip(number):
    encoded = keys.base62(number, 6)
    assert len(encoded) == 6
    assert sum(keys.ALPHABET.index(c) * 62**i for i, c in enumerate(reversed(encoded))) == number


def test_regex_finds_leaked_keys_in_text():
    key = keys.generate_key()
    assert keys.looks_like_key(f"config: token={key}\n")
    assert not keys.looks_like_key("sop_short")


@given(st.integers(min_value=0, max_value=62**16 - 1), st.integers(min_value=1, max_value=16))
def test_base62_matches_the_digit_by_digit_definition(number, width):
    from gateway.keys import ALPHABET, base62

    number %= 62**width
    digits, n = [], number
    for _ in range(width):
        n, rem = divmod(n, 62)
        digits.append(ALPHABET[rem])
    assert base62(number, width) == "".join(reversed(digits))


def test_a_key_seen_before_does_not_vouch_for_a_near_copy():
    """parse_key skips the format checks for a digest it saw lately: any other string (a broken
    checksum, a character outside the alphabet) has another digest and gets the full checks."""
    key = keys.generate_key()
    keys.parse_key(key)
    broken_checksum = key[:-1] + ("A" if key[-1] != "A" else "B")
    outside_alphabet = key[:10] + "!" + key[11:]
    for bad in (broken_checksum, outside_alphabet):
        with pytest.raises(keys.InvalidKeyFormat):
            keys.parse_key(bad)
    assert keys.parse_key(key) == keys.parse_key(key)


def test_parse_key_keeps_no_state_of_its_own_its_memo_is_the_callers():
    from gateway import keys as k

    def module_dict_sizes():
        return {name: len(v) for name, v in vars(k).items() if isinstance(v, dict)}

    before = module_dict_sizes()
    key = k.generate_key()
    k.parse_key(key)
    assert module_dict_sizes() == before  # nothing remembered globally
    memo: dict[str, str] = {}
    parsed = k.parse_key(key, memo)
    assert memo == {parsed.digest: parsed.key_id} and key not in str(memo)
    assert k.parse_key(key, memo) == parsed == k.parse_key(key)
    other = k.generate_key()
    k.parse_key(other, {})
    assert len(memo) == 1  # one memo per caller


def test_a_full_parse_key_memo_starts_over():
    from gateway import keys as k

    memo = {f"{i:064x}": f"key_{i}" for i in range(k.IDS_MAX)}
    parsed = k.parse_key(k.generate_key(), memo)
    assert memo == {parsed.digest: parsed.key_id}
