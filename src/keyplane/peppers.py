"""Loading the server peppers: from settings, or from a file created on first run (mode 0600, in
a data directory made 0700 if Keyplane creates it)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import time
from pathlib import Path

from keyplane.config import Settings
from keyplane.core.tokens import Pepper
from keyplane.files import private_dir

PEPPER_FILE = "peppers.json"


def _decode(entry: str) -> Pepper:
    pid, sep, b64 = entry.strip().partition(":")
    if not sep or not pid or not b64:
        raise ValueError("KEYPLANE_PEPPERS entries look like id:base64secret")
    secret = base64.b64decode(b64)
    if len(secret) < 32:
        raise ValueError(f"pepper {pid!r} must be at least 32 bytes")
    return Pepper(id=pid, secret=secret)


def load_peppers(settings: Settings) -> list[Pepper]:
    if settings.peppers is not None:
        return [_decode(e) for e in settings.peppers.get_secret_value().split(",") if e.strip()]
    path = settings.data_dir / PEPPER_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another worker created it first
            _create(path)
    for _ in range(50):
        try:
            data = json.loads(path.read_text())
            break
        except json.JSONDecodeError:  # the other worker is still writing it
            time.sleep(0.05)
    else:
        raise RuntimeError(f"{path} is not a readable pepper file")
    return [_decode(f"{p['id']}:{p['secret']}") for p in data["peppers"]]


def _create(path: Path) -> None:
    private_dir(path.parent)
    entry = {"id": "p1", "secret": base64.b64encode(secrets.token_bytes(32)).decode()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"peppers": [entry]}, f)
