"""gateway.webhooks: Standard Webhooks signatures, secrets, the retry schedule, subscriptions."""

from __future__ import annotations

import base64

import pytest

from gateway import webhooks
from gateway.events import CREATED, EVENT_TYPES, REVOKED


def test_signature_matches_the_specifications_example():
    # The example of the Standard Webhooks libraries' own tests.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    sig = webhooks.signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_carry_the_id_timestamp_and_signature():
    secret = webhooks.secret_from(bytes(range(32)))
    h = webhooks.headers(secret, "evt_1", 100, b"{}")
    assert h["webhook-id"] == "evt_1" and h["webhook-timestamp"] == "100"
    assert h["webhook-signature"] == webhooks.signature(secret, "evt_1", 100, b"{}")
    assert h["webhook-signature"] != webhooks.signature(secret, "evt_1", 101, b"{}")


def test_secret_form():
    secret = webhooks.secret_from(b"x" * 24)
    assert secret.startswith("whsec_") and webhooks.secret_bytes(secret) == b"x" * 24
    assert base64.b64decode(secret[6:]) == b"x" * 24
    with pytest.raises(ValueError):
        webhooks.secret_from(b"short")


@pytest.mark.parametrize("attempt,jitter,expected", [(1, 0.0, 500), (1, 0.999, 999), (2, 0.0, 1000), (3, 0.5, 3000),
                                                     (10, 0.0, 30_000), (40, 1.0, 60_000)])
def test_backoff_doubles_with_jitter_up_to_the_cap(attempt, jitter, expected):
    assert webhooks.backoff_ms(attempt, 1000, 60_000, jitter) == expected


def test_subscriptions():
    assert webhooks.check_events(["*"]) == () and webhooks.check_events([]) == ()
    assert webhooks.check_events([REVOKED, CREATED]) == (CREATED, REVOKED)  # catalogue order
    with pytest.raises(ValueError):
        webhooks.check_events(["api_key.nope"])
    every = webhooks.Endpoint("wh_1", "o", "https://x", webhooks.secret_from(bytes(24)))
    assert all(every.wants(t) for t in EVENT_TYPES)
    only = webhooks.Endpoint("wh_1", "o", "https://x", every.secret, events=(REVOKED,))
    assert only.wants(REVOKED) and not only.wants(CREATED)


def test_endpoint_round_trip_and_job_ids():
    e = webhooks.Endpoint("wh_1", "o", "https://x", "whsec_AA==", (CREATED,), "d", 1, "usr", 2)
    assert webhooks.decode_endpoint(webhooks.encode_endpoint(e)) == e
    assert webhooks.decode_endpoint(b"junk") is None
    assert webhooks.endpoint_of(webhooks.job_id("evt_a|b", "wh_2")) == "wh_2"


def test_the_pages_event_labels_are_the_event_types():
    import re

    from tests.support import ROOT

    source = (ROOT / "admin_api" / "static" / "webhooks.js").read_text()
    block = source.split("export const EVENT_LABEL = {", 1)[1].split("};", 1)[0]
    assert tuple(re.findall(r'"(api_key\.[a-z]+)":', block)) == EVENT_TYPES


def test_a_rotated_secret_signs_beside_the_new_one_until_its_grace_ends():
    old, new = webhooks.secret_from(b"o" * 32), webhooks.secret_from(b"n" * 32)
    endpoint = webhooks.Endpoint("wh_0000000000000000", "acme", "https://x", old).rotated(new, 1000, 500)
    assert endpoint.secret == new and endpoint.previous_until == 1500
    assert endpoint.signing_secrets(1499) == (new, old) and not endpoint.expired_previous(1499)
    assert endpoint.signing_secrets(1500) == (new,) and endpoint.expired_previous(1500)
    assert endpoint.without_previous().previous_secret == ""
    h = webhooks.headers(endpoint.signing_secrets(1000), "evt_1", 100, b"{}")
    assert h["webhook-signature"] == (webhooks.signature(new, "evt_1", 100, b"{}") + " "
                                      + webhooks.signature(old, "evt_1", 100, b"{}"))
    # No grace: the old secret stops at once.
    cut = webhooks.Endpoint("wh_0000000000000000", "acme", "https://x", old).rotated(new, 1000, 0)
    assert cut.signing_secrets(1000) == (new,) and cut.previous_secret == "" and not cut.expired_previous(1000)
