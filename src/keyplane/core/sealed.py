"""The one format of a share link's secret, read by the share page's WebCrypto code
(``admin/static/share.js``) and written by the CLI:

* key: 32 random bytes (AES-256), sent only in the link's fragment as unpadded base64url;
* ciphertext: unpadded base64url of ``iv (12 bytes) || AES-GCM ciphertext || tag (16 bytes)``
  of the UTF-8 secret, with no associated data.

The server stores the ciphertext and never sees the key.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
IV_BYTES = 12
TAG_BYTES = 16


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Unpadded (or padded) base64url; ValueError on anything else."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64url")
    stripped = text.rstrip("=")
    if any(c not in _B64URL for c in stripped):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class Sealed:
    ciphertext: str  # for the server
    key: str  # for the link's fragment only

    def __repr__(self) -> str:
        return "Sealed(ciphertext=…, key=<hidden>)"


def seal(secret: str) -> Sealed:
    key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    iv = os.urandom(IV_BYTES)
    body = AESGCM(key).encrypt(iv, secret.encode("utf-8"), None)
    return Sealed(ciphertext=b64url(iv + body), key=b64url(key))


def unseal(ciphertext: str, key: str) -> str:
    """The secret (for tests and tools); raises on a wrong key or altered ciphertext."""
    raw = unb64url(ciphertext)
    return AESGCM(unb64url(key)).decrypt(raw[:IV_BYTES], raw[IV_BYTES:], None).decode("utf-8")


def well_formed(ciphertext: str) -> bool:
    """Could this be a sealed secret (the server's only check: it cannot decrypt)?"""
    try:
        return len(unb64url(ciphertext)) >= IV_BYTES + TAG_BYTES + 1
    except ValueError:
        return False
