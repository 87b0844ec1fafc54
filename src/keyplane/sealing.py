"""Secrets the server must read back (webhook signing secrets), encrypted at rest.

AES-256-GCM (``cryptography``'s AESGCM) under a key derived from a server pepper with
HKDF-SHA-256; the pepper never reaches the database, so a copy of the database alone reveals no
signing secret. A sealed value is ``<pepper id>:<base64(nonce | ciphertext | tag)>``, bound to a
context (the owning record's id) as associated data: it cannot be pasted onto another record.
Values sealed under an older pepper open while that pepper is still configured.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyplane.core.tokens import Pepper

_INFO = b"keyplane sealed secrets v1"
_NONCE = 12


def _derive(pepper: Pepper) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(pepper.secret)
    return AESGCM(key)


class PepperSealer:
    def __init__(self, peppers: list[Pepper]) -> None:
        if not peppers:
            raise ValueError("at least one pepper is required")
        self._current = peppers[0].id
        self._keys = {p.id: _derive(p) for p in peppers}

    def seal(self, plain: str, context: str) -> str:
        nonce = os.urandom(_NONCE)
        box = self._keys[self._current].encrypt(nonce, plain.encode(), context.encode())
        return f"{self._current}:{base64.b64encode(nonce + box).decode()}"

    def unseal(self, sealed: str, context: str) -> str:
        pepper_id, sep, body = sealed.partition(":")
        if not sep or pepper_id not in self._keys:
            raise ValueError("sealed with a pepper that is not configured")
        raw = base64.b64decode(body)
        plain = self._keys[pepper_id].decrypt(raw[:_NONCE], raw[_NONCE:], context.encode())
        return plain.decode()
