"""Secret-scanning partner reports (GitHub's format): the code host's public keys and the check
of a report's signature.

The keys come as ``{"public_keys": [{"key_identifier", "key" (PEM), "is_current"}]}`` from a
file or a URL. They are loaded on first use, reloaded every ``refresh`` (an hour) and when a
report names a key id not loaded yet, but never more than once per ``min_interval`` (a minute),
so that reports with made-up key ids cannot make Keyplane hammer the code host. A failed reload
keeps the keys already loaded.

A report is ECDSA P-256 / SHA-256 over the raw body; the signature is base64 DER.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from keyplane.core.errors import AuthenticationError, Unavailable
from keyplane.core.ports import Clock

log = logging.getLogger("keyplane.security")

MAX_KEYS_DOCUMENT = 1 << 20
_ECDSA = ec.ECDSA(hashes.SHA256())


def parse_public_keys(document: bytes) -> dict[str, ec.EllipticCurvePublicKey]:
    """The P-256 keys of a GitHub-format public-keys document, by key identifier."""
    data = json.loads(document)
    entries = data.get("public_keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError('the document has no "public_keys" list')
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        key_id, pem = entry.get("key_identifier"), entry.get("key")
        if not isinstance(key_id, str) or not isinstance(pem, str):
            continue
        try:
            key = load_pem_public_key(pem.encode())
        except ValueError:
            log.warning("secret scanning: public key %r is not PEM; skipped", key_id[:80])
            continue
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                            ec.SECP256R1):
            log.warning("secret scanning: public key %r is not ECDSA P-256; skipped",
                        key_id[:80])
            continue
        keys[key_id] = key
    return keys


def file_source(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        with path.open("rb") as f:
            return f.read(MAX_KEYS_DOCUMENT + 1)[:MAX_KEYS_DOCUMENT]

    return read


def url_source(url: str, timeout: float = 5.0) -> Callable[[], bytes]:
    def fetch() -> bytes:
        import httpx2

        response = httpx2.get(url, timeout=timeout, follow_redirects=False,
                              headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.content[:MAX_KEYS_DOCUMENT]

    return fetch


class ScanningKeys:
    """The code host's public keys, cached, and the check of a signed report."""

    def __init__(self, source: Callable[[], bytes] | None, clock: Clock, *,
                 refresh: timedelta = timedelta(hours=1),
                 min_interval: timedelta = timedelta(minutes=1)) -> None:
        self.source = source
        self.clock = clock
        self.refresh = refresh
        self.min_interval = min_interval
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._loaded_at: datetime | None = None
        self._tried_at: datetime | None = None
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.source is not None

    def _current(self, key_id: str) -> dict[str, ec.EllipticCurvePublicKey]:
        if self.source is None:
            raise Unavailable("secret scanning is not configured (set "
                              "KEYPLANE_SECRET_SCANNING_KEYS_FILE or _KEYS_URL)",
                              code="not_configured")
        with self._lock:
            now = self.clock.now()
            stale = self._loaded_at is None or now - self._loaded_at >= self.refresh
            unknown = key_id not in self._keys
            may_try = self._tried_at is None or now - self._tried_at >= self.min_interval
            if (stale or unknown) and may_try:
                self._tried_at = now
                try:
                    self._keys = parse_public_keys(self.source())
                    self._loaded_at = now
                except Exception as exc:  # keep what was loaded; say why in the log
                    log.warning("secret scanning: could not load the public keys: %s",
                                type(exc).__name__)
            if self._loaded_at is None:
                raise Unavailable("the secret-scanning public keys could not be loaded",
                                  code="keys_unavailable")
            return self._keys

    def check(self, body: bytes, key_id: str | None, signature: str | None) -> str:
        """Refuse (401) unless ``signature`` is a valid signature of ``body`` by ``key_id``;
        returns the key id."""
        if not key_id or not signature:
            raise AuthenticationError(
                "Github-Public-Key-Identifier and Github-Public-Key-Signature are required",
                code="signature_required")
        key = self._current(key_id).get(key_id)
        if key is None:
            raise AuthenticationError("unknown public key identifier", code="unknown_key")
        try:
            der = base64.b64decode(signature, validate=True)
            key.verify(der, body, _ECDSA)
        except (InvalidSignature, binascii.Error, ValueError):
            raise AuthenticationError("the signature does not match the body",
                                      code="bad_signature") from None
        return key_id


def source_from(keys_file: Path | None, keys_url: str | None) -> Callable[[], bytes] | None:
    if keys_file is not None:
        return file_source(keys_file)
    if keys_url:
        return url_source(keys_url)
    return None

