"""Secret-scanning reports (gateway/leaks.py), pure: public keys, signatures, reports, feedback."""

from __future__ import annotations

import base64
import hashlib

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import leaks
from gateway.keys import generate_key, parse_key
from gateway.model import KeyRecord, Leak
from gateway.store.codec import decode_record, encode_record

P256 = ec.generate_private_key(ec.SECP256R1())


def pem(private) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def sign(body: bytes, private=P256) -> str:
    return base64.b64encode(private.sign(body, ec.ECDSA(hashes.SHA256()))).decode()


def test_public_keys_keep_only_p256_keys():
    doc = {"public_keys": [
        {"key_identifier": "a", "key": pem(P256), "is_current": True},
        {"key_identifier": "p384", "key": pem(ec.generate_private_key(ec.SECP384R1()))},
        {"key_identifier": "rsa", "key": pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))},
        {"key_identifier": "junk", "key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"}]}
    assert list(leaks.parse_public_keys(msgspec.json.encode(doc))) == ["a"]
    for bad in (b"", b"[]", b'{"public_keys": 1}', b'{"public_keys": [{"key": "x"}]}'):
        with pytest.raises(ValueError):
            leaks.parse_public_keys(bad)


def test_a_signature_verifies_over_exactly_its_body():
    key = P256.public_key()
    body = b'[{"token":"x"}]'
    good = sign(body)
    assert leaks.signature_valid(key, good, body)
    for other in (body + b" ", body[:-1], b""):
        assert not leaks.signature_valid(key, good, other)
    other_key = ec.generate_private_key(ec.SECP256R1())
    for bad in ("", "!!", "AAAA", sign(body, other_key), good + "=" * 400, good[:-4]):
        assert not leaks.signature_valid(key, bad, body)


@pytest.mark.parametrize("body", [b"{}", b"[1]", b'[{"token": ""}]', b'[{"token": 1}]', b"[", b"\xff",
                                  b'[{"token": "x", "url": 5}]'])
def test_what_is_not_a_report_is_refused(body):
    with pytest.raises(leaks.BadReport):
        leaks.parse_report(body)


def test_a_report_ignores_unknown_fields_and_caps_its_length():
    [entry] = leaks.parse_report(b'[{"token": "t", "type": "x", "url": "u", "source": "s", "new": 1}]')
    assert entry == leaks.ReportedToken("t", "x", "u", "s")
    assert len(leaks.parse_report(msgspec.json.encode([{"token": "t"}] * leaks.MAX_TOKENS))) == leaks.MAX_TOKENS
    with pytest.raises(leaks.BadReport):
        leaks.parse_report(msgspec.json.encode([{"token": "t"}] * (leaks.MAX_TOKENS + 1)))


def test_feedback_labels_each_entry_by_the_sha256_of_its_token():
    entries = [leaks.ReportedToken("a", "t"), leaks.ReportedToken("ü", "t"), leaks.ReportedToken("a", "t")]
    out = msgspec.json.decode(leaks.feedback(entries, {"a"}))
    assert out == [{"token_hash": hashlib.sha256(b"a").hexdigest(), "token_type": "t", "label": "true_positive"},
                   {"token_hash": hashlib.sha256("ü".encode()).hexdigest(), "token_type": "t",
                    "label": "false_positive"},
                   {"token_hash": hashlib.sha256(b"a").hexdigest(), "token_type": "t", "label": "true_positive"}]


def _record(secret: str, **kw) -> KeyRecord:
    p = parse_key(secret)
    return KeyRecord(p.key_id, "org", "n", p.prefix, ("a:b",), p.digest, 1, "op", **kw)


def test_reported_key_is_ours_only_with_its_digest_and_acted_on_only_while_it_works():
    secret = generate_key()
    digest = parse_key(secret).digest
    assert leaks.reported_key(None, digest, 10) == (False, False)
    assert leaks.reported_key(_record(generate_key()), digest, 10) == (False, False)
    assert leaks.reported_key(_record(secret), digest, 10) == (True, True)
    assert leaks.reported_key(_record(secret, revoked_at=5), digest, 10) == (True, False)
    assert leaks.reported_key(_record(secret, secret_ends_at=5), digest, 10) == (True, False)  # rolled away
    assert leaks.reported_key(_record(secret, secret_ends_at=50), digest, 10) == (True, True)  # in its grace
    assert leaks.reported_key(_record(secret, expires_at=5), digest, 10) == (True, True)  # expiry can be edited


def test_a_leak_mark_round_trips_in_the_record():
    record = _record(generate_key(), version=2, leak=Leak("https://x/☃", "content", 7, "github", "flag"))
    flat = encode_record(record)
    stored = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in zip(flat[::2], flat[1::2], strict=True)}
    assert decode_record(record.id, stored) == record
    assert decode_record(record.id, {**stored, b"k": b"{}"}) is None  # a damaged mark: no key at all (fail closed)
