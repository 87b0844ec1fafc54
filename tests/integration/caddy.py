"""Debian's Caddy on loopback, with the Caddyfile ``docs/forward-auth.md`` gives (read from the
document, so the snippet users copy is the one that runs), in front of a Node upstream that
echoes the request headers it gets (the product, in another language; a Python one when
``node`` is missing).

Without Caddy the tests are skipped, except in CI (``KEYPLANE_TEST_REQUIRE_SERVICES``), where
they fail."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.nginx import echo_upstream
from tests.support import REQUIRE_SERVICES, free_port

CADDY = shutil.which("caddy") or "/usr/bin/caddy"
NODE = shutil.which("node") or shutil.which("nodejs")
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "forward-auth.md"
ECHO_JS = Path(__file__).with_name("upstream") / "echo.js"

# run unprivileged on loopback: no admin endpoint, no certificates
GLOBAL = """{
\tadmin off
\tauto_https off
}
"""


def documented_caddyfile() -> str:
    """The Caddyfile block of docs/forward-auth.md, as written there."""
    found = re.search(r"```caddyfile\n(.*?)```", DOC.read_text(), re.S)
    assert found is not None, "docs/forward-auth.md has no caddyfile block"
    return found.group(1)


def site(keyplane: str, upstream: str, port: int) -> str:
    """The documented site, pointed at this test's Keyplane and upstream and bound to loopback."""
    text = documented_caddyfile()
    for placeholder in ("api.example.com {", "keyplane:8080", "app:3000"):
        assert placeholder in text, f"the documented Caddyfile lost {placeholder!r}"
    text = (text.replace("api.example.com {", f"http://127.0.0.1:{port} {{\n    bind 127.0.0.1")
            .replace("keyplane:8080", keyplane).replace("app:3000", upstream))
    return GLOBAL + text


def missing_caddy() -> str | None:
    if not os.path.exists(CADDY):
        return f"{CADDY} is not installed (apt-get install -y caddy)"
    return None


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"caddy did not start: {log.read_text(errors='replace')}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("caddy did not listen in time")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextmanager
def product_upstream() -> Iterator[str]:
    """The echoing product (Node when present); yields host:port."""
    if NODE is None:
        with echo_upstream() as address:
            yield address
        return
    proc = subprocess.Popen([NODE, str(ECHO_JS)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"the Node upstream did not start: {line!r}")
        yield f"127.0.0.1:{line}"
    finally:
        _stop(proc)


@contextmanager
def caddy(keyplane: str, upstream: str) -> Iterator[str]:
    """Caddy on a free loopback port in front of ``upstream``, asking ``keyplane`` (host:port)
    with the documented ``forward_auth``; yields its base URL."""
    missing = missing_caddy()
    if missing:
        if REQUIRE_SERVICES:
            pytest.fail(missing)
        pytest.skip(missing)
    home = Path(tempfile.mkdtemp(prefix="kp-caddy-"))
    port = free_port()
    conf = home / "Caddyfile"
    conf.write_text(site(keyplane, upstream, port))
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
           "XDG_CONFIG_HOME": str(home / "config")}
    log = home / "caddy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([CADDY, "run", "--config", str(conf), "--adapter", "caddyfile"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_listening(port, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(home, ignore_errors=True)
