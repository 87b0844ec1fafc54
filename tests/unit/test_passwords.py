"""Passwords are hashed with pwdlib's recommended argon2id parameters (the suite's own
sign-ins use a cheaper argon2id: see ``cheap_argon2`` in tests/conftest.py)."""

from __future__ import annotations

from keyplane.services import passwords

PRODUCTION = passwords._hasher  # read at collection, before the suite's cheap hasher is set


def test_production_hashes_are_argon2id_with_the_recommended_cost() -> None:
    production = PRODUCTION()
    hashed = production.hash("correct horse battery staple")
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert production.verify("correct horse battery staple", hashed)
    assert not production.verify("correct horse battery stable", hashed)


def test_the_suite_hashes_with_argon2id_too() -> None:
    hashed = passwords.hash_password("correct horse battery staple")
    assert hashed.startswith("$argon2id$")
    assert passwords.verify_password("correct horse battery staple", hashed)
    assert not passwords.verify_password("correct horse battery stable", hashed)
    assert passwords.verify_password("anything at all", None) is False
