"""The real ``keyplane`` command as a subprocess, on a fresh SQLite file and on a fresh
PostgreSQL schema: SPEC.md's first steps, the key commands, bad input, and ``keyplane serve``
answering for the keys the CLI made."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import pytest

from keyplane.core import tokens
from tests.conftest import auth
from tests.support import free_port

KEYPLANE = Path(sys.executable).with_name("keyplane")
PASSWORD = "correct horse battery staple"


@dataclass
class Cli:
    env: dict[str, str]
    workdir: Path

    def run(self, *args: str, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KEYPLANE), *args], input=stdin, capture_output=True, text=True, timeout=60,
            env={**self.env, **(env or {})}, cwd=self.workdir, check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        return done.stdout

    def json(self, *args: str, stdin: str | None = None) -> Any:
        return json.loads(self.ok(*args, "--json", stdin=stdin))

    def refused(self, *args: str, env: dict[str, str] | None = None) -> str:
        """A failing command: non-zero exit, one line on stderr, no traceback, no stdout."""
        done = self.run(*args, env=env)
        assert done.returncode != 0, (args, done.stdout)
        assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (args, done.stderr)
        assert lines[0].startswith("error: "), lines
        assert done.stdout == "", done.stdout
        return lines[0]


@pytest.fixture
def cli(database: tuple[str, str | None], tmp_path: Path) -> Cli:
    """The CLI's environment: a fresh data directory, and the test's empty database (for
    PostgreSQL, a URL that lands every connection in the test's own schema)."""
    url, schema = database
    if schema is not None:
        url = f"{url}?options={quote(f'-csearch_path={schema}')}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    env.update(KEYPLANE_DATA_DIR=str(tmp_path / "data"), KEYPLANE_DATABASE_URL=url,
               COLUMNS="80", NO_COLOR="1")
    env.pop("FORCE_COLOR", None)
    return Cli(env, tmp_path)


def secret_free(text: str, *secrets: str) -> bool:
    return not any(s in text or s.partition("_")[2] in text for s in secrets)


# -- SPEC.md's first steps, then every key command ------------------------------------------


def test_first_steps_and_key_commands_then_serve(cli: Cli, tmp_path: Path) -> None:
    # exactly SPEC.md's "Command line" script, on an empty database (independent commands
    # run side by side: each is a process of its own, the CLI is not the thing measured)
    tenant = cli.json("tenants", "create", "Acme")
    tid = tenant["id"]
    assert tid.startswith("loc_") and tenant["name"] == "Acme"
    admin, gateway = parallel(
        lambda: cli.json("users", "create", "--tenant", tid, "--email", "a@example.com",
                         "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n"),
        lambda: cli.json("keys", "create", "--operator", "--name", "api-gateway", "--scope",
                         "keys:verify"),
    )
    assert admin["role"] == "admin" and admin["has_password"] is True
    assert admin["tenant_id"] == tid and PASSWORD not in json.dumps(admin)
    assert gateway["tenant_id"] is None and gateway["owner_id"] is None
    assert gateway["scopes"] == ["keys:verify"]
    ops, zap = parallel(
        lambda: cli.json("keys", "create", "--tenant", tid, "--name", "ops", "--scope",
                         "keys:read", "--scope", "keys:write"),
        lambda: cli.json("keys", "create", "--tenant", tid, "--name", "[zapier]", "--scope",
                         "contacts:read", "--allowed-ip", "203.0.113.0/24",
                         "--expires-in-days", "30", "--description", "CRM sync"),
    )
    assert tokens.parse(ops["key"]) is not None and tokens.parse(gateway["key"]) is not None
    assert ops["owner_id"] == admin["id"] and ops["tenant_id"] == tid
    assert ops["scopes"] == ["keys:read", "keys:write"] and ops["require_tls"] is True
    assert zap["owner_id"] == admin["id"] and zap["allowed_ips"] == ["203.0.113.0/24"]

    # keys show / rotate / duplicate / revoke / list, all with --json
    shown, rotated, copy, human = parallel(
        lambda: cli.json("keys", "show", ops["id"], "--tenant", tid),
        lambda: cli.json("keys", "rotate", zap["id"], "--tenant", tid,
                         "--grace-period-seconds", "0"),
        lambda: cli.json("keys", "duplicate", zap["id"], "--tenant", tid, "--name", "[/] copy"),
        lambda: cli.ok("keys", "create", "--tenant", tid, "--name", "by hand"),
    )
    assert shown == {k: v for k, v in ops.items() if k not in ("key", "note")}
    assert rotated["id"] == zap["id"] and rotated["key"] != zap["key"]
    assert rotated["start"] == rotated["key"][3:11]
    assert copy["name"] == "[/] copy" and copy["id"] != zap["id"]
    for field in ("scopes", "allowed_ips", "description", "owner_id", "require_tls"):
        assert copy[field] == zap[field], field
    # people get the key once, after a table of its fields
    assert "Copy this key now" in human and "┌" in human
    shown_secret = human.rsplit("Copy this key now; it will not be shown again:", 1)[1].strip()
    assert tokens.parse(shown_secret) is not None
    assert cli.json("keys", "revoke", zap["id"], "--tenant", tid) == {
        "id": zap["id"], "revoked": True}

    listed, table, operator_keys, upgraded = parallel(
        lambda: cli.json("keys", "list", "--tenant", tid),
        lambda: cli.ok("keys", "list", "--tenant", tid),
        lambda: cli.json("keys", "list", "--operator"),
        lambda: cli.json("db", "upgrade"),
    )
    assert {k["name"] for k in listed["items"]} == {"ops", "[/] copy", "by hand"}
    assert all("key" not in k for k in listed["items"])
    assert [k["id"] for k in operator_keys["items"]] == [gateway["id"]]
    assert upgraded["revision"]
    # a table for people, ids in full even on an 80-column terminal, names printed as they
    # are (brackets are not markup)
    assert "┏" in table and "┃ id" in table and "[/]" in table
    assert ops["id"] in table and copy["id"] in table and zap["id"] not in table
    secrets = [ops["key"], gateway["key"], zap["key"], rotated["key"], copy["key"],
               shown_secret]
    assert secret_free(table + json.dumps([listed, shown, operator_keys]), *secrets)

    # `keyplane serve` on the same database answers for the keys the CLI made
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(KEYPLANE), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env={**cli.env, "KEYPLANE_TRUSTED_PROXIES": "127.0.0.1/32"}, cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, base, log_path)
        # the TLS-only keys work behind a trusted TLS-terminating proxy, not over plain HTTP
        https = {"X-Forwarded-Proto": "https"}
        with httpx2.Client(base_url=base, timeout=10) as http:
            def verify(key: str, **extra: Any) -> dict[str, Any]:
                r = http.post("/v1/verify", json={"key": key, "tls": True, **extra},
                              headers={**auth(gateway["key"]), **https})
                assert r.status_code == 200, r.text
                out: dict[str, Any] = r.json()
                return out

            answer = verify(ops["key"], scopes=["keys:write"])
            assert answer["code"] == "VALID"
            assert (answer["key_id"], answer["tenant_id"], answer["owner_id"]) == (
                ops["id"], tid, admin["id"])
            assert verify(copy["key"], ip="203.0.113.9", scopes=["contacts:read"])["code"] == (
                "VALID")
            assert verify(copy["key"], ip="198.51.100.9")["code"] == "IP_NOT_ALLOWED"
            assert verify(zap["key"])["code"] == "NOT_FOUND"  # rotated with no grace
            assert verify(rotated["key"])["code"] == "REVOKED"

            r = http.post("/v1/verify", json={"key": ops["key"], "tls": True},
                          headers=auth(gateway["key"]))
            assert r.status_code == 403 and r.json()["error"]["code"] == "tls_required"

            # and the CLI-made management key manages keys over HTTP
            r = http.get("/v1/keys", headers={**auth(ops["key"]), **https})
            assert r.status_code == 200, r.text
            assert {k["name"] for k in r.json()["items"]} == {"ops", "[/] copy", "by hand"}

            # a revocation made by the CLI, another process, reaches the running server
            # (which has the key cached by now) without a restart
            assert cli.json("keys", "revoke", copy["id"], "--tenant", tid)["revoked"] is True
            deadline = time.monotonic() + 15
            while verify(copy["key"], ip="203.0.113.9")["code"] == "VALID":
                assert time.monotonic() < deadline, "the server kept accepting a revoked key"
                time.sleep(0.05)
            assert verify(copy["key"], ip="203.0.113.9")["code"] == "REVOKED"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    served = log_path.read_text()
    assert f"Keyplane listening on http://127.0.0.1:{port}" in served
    assert "/docs" in served
    assert "POST /v1/verify" in served  # the server did log its requests ...
    assert secret_free(served, *secrets)  # ... and never a secret


def parallel(*calls: Callable[[], Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def wait_until_ready(proc: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"keyplane serve exited:\n{log_path.read_text()}")
        try:
            if httpx2.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"keyplane serve did not start:\n{log_path.read_text()}")


# -- bad input ------------------------------------------------------------------------------


# validation and error reporting do not depend on the database: one run, on SQLite, keeps
# the (process-heavy) CLI suite short
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_bad_input_gets_one_line_and_a_non_zero_exit(cli: Cli) -> None:
    tid = cli.json("tenants", "create", "Acme")["id"]
    cases: list[tuple[tuple[str, ...], str]] = [
        (("keys", "create", "--tenant", tid, "--name", "x", "--owner", "usr_nope",
          "--scope", "contacts:delete"), "unknown scope 'contacts:delete'"),
        (("keys", "create", "--tenant", "loc_doesnotexist", "--name", "x"), "no such tenant"),
        (("keys", "create", "--tenant", tid, "--name", "x", "--owner", "usr_nope",
          "--allowed-ip", "10.0.0.300/8"), "allowed_ips[0] is not an IPv4 or IPv6 CIDR"),
        (("keys", "create", "--tenant", tid, "--name", "x", "--owner", "usr_nope"),
         "owner_id"),
        # a long message stays on one line; brackets are printed, not read as markup
        (("keys", "create", "--tenant", tid, "--name", "x", "--owner", "usr_nope",
          "--scope", "[/]" + "a" * 150),
         "unknown scope '[/]" + "a" * 150),
        (("users", "create", "--tenant", tid, "--email", "not-an-email"), "email"),
        (("keys", "show", "key_doesnotexist", "--tenant", tid), "no such key"),
        (("keys", "create", "--name", "x"), "--tenant or --operator"),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        lines = list(pool.map(lambda case: cli.refused(*case[0]), cases))
        # an unreachable database is a one-line error too
        unreachable = pool.submit(cli.refused, "tenants", "list", env={
            "KEYPLANE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"})
    for (args, expected), line in zip(cases, lines, strict=True):
        assert expected in line, (args, line)
    assert "database error" in unreachable.result()
    # nothing was written by any of them
    assert cli.json("keys", "list", "--tenant", tid)["items"] == []
