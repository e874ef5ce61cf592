"""admin_api/claims.py: a verified token's claims -> the person, their org and role."""

from __future__ import annotations

import pytest

from admin_api.claims import BadClaims, person

MAPPING = dict(org_claim="org_id", roles_claim="roles", admin_role="admin", viewer_role="viewer")


def test_admin_viewer_and_no_role():
    base = {"sub": "alice", "org_id": "org-a", "email": "alice@a.example"}
    assert person({**base, "roles": ["viewer", "admin"]}, **MAPPING).role == "admin"
    assert person({**base, "roles": ["viewer"]}, **MAPPING).role == "viewer"
    assert person({**base, "roles": ["auditor"]}, **MAPPING).role == "none"
    assert person(base, **MAPPING).role == "none"  # no roles claim at all
    assert person({**base, "roles": "admin other"}, **MAPPING).role == "admin"  # space-separated


def test_the_claim_names_and_role_names_are_configurable():
    claims = {"sub": "u1", "tenant": "org-a", "groups": ["key-owners"]}
    who = person(claims, org_claim="tenant", roles_claim="groups", admin_role="key-owners", viewer_role="readers")
    assert (who.org_id, who.role) == ("org-a", "admin")


def test_the_actor_names_subject_and_email():
    assert person({"sub": "alice", "org_id": "o", "email": "alice@a.example"}, **MAPPING).actor == \
        "user:alice <alice@a.example>"
    assert person({"sub": "alice", "org_id": "o"}, **MAPPING).actor == "user:alice"
    # An address the provider marks unverified is not the person's; unmarked or verified, it is.
    assert person({"sub": "alice", "org_id": "o", "email": "boss@a.example", "email_verified": False},
                  **MAPPING).actor == "user:alice"
    assert person({"sub": "alice", "org_id": "o", "email": "alice@a.example", "email_verified": True},
                  **MAPPING).actor == "user:alice <alice@a.example>"
    # An e-mail that could break the format is left out, never copied in.
    for email in ("a>b@x.example", "a b@x.example", "a@x.example\n", 5, "no-at-sign"):
        assert person({"sub": "alice", "org_id": "o", "email": email}, **MAPPING).actor == "user:alice"


@pytest.mark.parametrize("claims, named", [
    ({"org_id": "o"}, "sub"), ({"sub": "", "org_id": "o"}, "sub"), ({"sub": "a b", "org_id": "o"}, "sub"),
    ({"sub": "x" * 256, "org_id": "o"}, "sub"), ({"sub": "a\n", "org_id": "o"}, "sub"),
    ({"sub": "a"}, "org_id"), ({"sub": "a", "org_id": ["o"]}, "org_id"), ({"sub": "a", "org_id": "o/../p"}, "org_id"),
    ({"sub": "a", "org_id": "o", "roles": 5}, "roles"), ({"sub": "a", "org_id": "o", "roles": [["admin"]]}, "roles"),
])
def test_claims_that_name_no_person_of_an_org_are_refused(claims, named):
    with pytest.raises(BadClaims, match=f"claim {named}"):
        person(claims, **MAPPING)
