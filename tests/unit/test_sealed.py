"""The share-link format: AES-256-GCM, base64url(iv || ciphertext || tag), key in the fragment."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from keyplane.core import sealed


def test_seal_and_unseal() -> None:
    box = sealed.seal("kp_secret ünïcode")
    assert sealed.unseal(box.ciphertext, box.key) == "kp_secret ünïcode"
    assert len(sealed.unb64url(box.key)) == 32
    raw = sealed.unb64url(box.ciphertext)
    assert len(raw) == 12 + len("kp_secret ünïcode".encode()) + 16
    assert "=" not in box.ciphertext + box.key and "kp_secret" not in box.ciphertext
    assert box.key not in repr(box)
    assert sealed.well_formed(box.ciphertext)


def test_each_seal_is_fresh_and_tampering_is_detected() -> None:
    a, b = sealed.seal("same"), sealed.seal("same")
    assert a.ciphertext != b.ciphertext and a.key != b.key
    with pytest.raises(InvalidTag):
        sealed.unseal(a.ciphertext, b.key)
    raw = bytearray(sealed.unb64url(a.ciphertext))
    raw[-1] ^= 1
    with pytest.raises(InvalidTag):
        sealed.unseal(sealed.b64url(bytes(raw)), a.key)


@pytest.mark.parametrize("text", ["", "short", "not base64url!", "a+b/c" * 10, "é" * 40])
def test_what_is_not_a_sealed_secret(text: str) -> None:
    assert not sealed.well_formed(text)
