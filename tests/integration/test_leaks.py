"""Leaked keys, as a code host and a person report them: GitHub-shaped secret-scanning reports
signed with a test ECDSA P-256 key pair against a real server (SQLite and PostgreSQL), and
``keyplane keys report-leak`` as a subprocess."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keyplane.bootstrap import Keyplane
from keyplane.core import tokens
from keyplane.core.rights import SYSTEM
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.helpers import code
from tests.integration.oauth_support import approved_app, exchange, get_code
from tests.integration.test_cli import Cli, cli  # noqa: F401  (the CLI fixture)
from tests.support import SettableClock

REPORTS = "/v1/secret-scanning/reports"
KID = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a"


class Signer:
    """A code host's signing key, and its public-keys document in GitHub's format."""

    def __init__(self, key_id: str = KID) -> None:
        self.key_id = key_id
        self.private = ec.generate_private_key(ec.SECP256R1())

    def entry(self) -> dict[str, Any]:
        pem = self.private.public_key().public_bytes(Encoding.PEM,
                                                     PublicFormat.SubjectPublicKeyInfo)
        return {"key_identifier": self.key_id, "key": pem.decode(), "is_current": True}

    def headers(self, body: bytes, key_id: str | None = None) -> dict[str, str]:
        signature = self.private.sign(body, ec.ECDSA(hashes.SHA256()))
        return {"Github-Public-Key-Identifier": key_id or self.key_id,
                "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
                "Content-Type": "application/json"}


def document(*signers: Signer) -> str:
    return json.dumps({"public_keys": [s.entry() for s in signers]})


def found(token: str, url: str = "https://github.com/octo/app/blob/abc/.env",
          source: str = "content") -> dict[str, str]:
    return {"token": token, "type": "keyplane_api_key", "url": url, "source": source}


@dataclass
class Scanner:
    kp: Keyplane
    http: httpx2.Client
    signer: Signer
    tenant: Tenant
    verifier: str
    clock: SettableClock

    def post(self, items: list[dict[str, Any]], signer: Signer | None = None,
             **headers: str) -> httpx2.Response:
        body = json.dumps(items).encode()
        sent = (signer or self.signer).headers(body)
        sent.update(headers)
        return self.http.post(REPORTS, content=body, headers=sent)

    def key(self, name: str = "zapier") -> tuple[str, str]:
        issued = self.kp.keys.create(SYSTEM, self.tenant.id, {
            "name": name, "owner_id": self.tenant.admin_id, "require_tls": False})
        return issued.key.id, issued.secret


@pytest.fixture
def scanner(database: tuple[str, str | None], tmp_path: Path,
            clock: SettableClock) -> Iterator[Scanner]:
    signer = Signer()
    keys_file = tmp_path / "github-keys.json"
    keys_file.write_text(document(signer))
    url, schema = database
    with serving(url, schema, tmp_path, clock, secret_scanning_keys_file=keys_file) as (kp, http):
        verifier = kp.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"],
                                                 "require_tls": False}, operator=True).secret
        yield Scanner(kp, http, signer, make_tenant(kp), verifier, clock)


def audit(kp: Keyplane, tenant_id: str, action: str) -> list[Any]:
    with kp.ctx.uow(readonly=True) as uow:
        return list(uow.audit.page(tenant_id, action=action, limit=200, cursor=None).items)


def test_a_signed_report_revokes_the_key_and_records_where(scanner: Scanner) -> None:
    kp, http, mk = scanner.kp, scanner.http, scanner.tenant.management_key
    key_id, secret = scanner.key()
    assert code(http, scanner.verifier, secret) == "VALID"
    where = "https://github.com/octo/app/blob/abc/.env"

    r = scanner.post([found(secret, where)])
    assert r.status_code == 200, r.text
    assert r.json() == [{"token_raw": secret, "token_type": "keyplane_api_key",
                         "label": "true_positive"}]
    assert code(http, scanner.verifier, secret) == "REVOKED"

    shown = http.get(f"/v1/keys/{key_id}", headers=auth(mk))  # still readable: why it died
    assert shown.status_code == 200, shown.text
    leaked = shown.json()["leaked"]
    assert leaked["url"] == where and leaked["source"] == "content" and leaked["at"]
    assert shown.json()["revoked_at"] is not None and shown.json()["enabled"] is False
    assert http.patch(f"/v1/keys/{key_id}", json={"enabled": True},
                      headers=auth(mk)).status_code == 404  # nothing else can be done

    [event] = audit(kp, scanner.tenant.id, "key.leaked")
    assert event.target == key_id and event.details["url"] == where
    assert event.details["response"] == "revoked"
    assert scanner.tenant.admin_id in event.details["notify"]  # the owner and the admins
    assert event.actor == f"secret-scanning:{KID}"
    everything = json.dumps([vars(e) for e in audit(kp, scanner.tenant.id, "")], default=str)
    assert secret not in everything and secret.partition("_")[2] not in everything

    # the same signed body again: a replay, refused
    replay = scanner.post([found(secret, where)])
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "replayed_report"


def test_of_identical_reports_sent_at_once_exactly_one_is_accepted(scanner: Scanner) -> None:
    _, secret = scanner.key()
    body = json.dumps([found(secret)]).encode()
    headers = scanner.signer.headers(body)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(
            lambda _: scanner.http.post(REPORTS, content=body, headers=headers), range(6)))
    assert sorted(a.status_code for a in answers) == [200] + [409] * 5
    assert len(audit(scanner.kp, scanner.tenant.id, "key.leaked")) == 1
    scanner.clock.advance(hours=24, seconds=1)  # remembered for a day, then forgotten
    again = scanner.http.post(REPORTS, content=body, headers=headers)
    assert again.status_code == 200 and again.json()[0]["label"] == "true_positive"


def test_unknown_tokens_are_false_positives(scanner: Scanner) -> None:
    never_issued = tokens.generate("kp")  # our format, checksum right, not in storage
    bad_checksum = never_issued[:-1] + ("A" if never_issued[-1] != "A" else "B")
    _, secret = scanner.key()
    r = scanner.post([found(never_issued), found(bad_checksum), found("ghp_notours"),
                      found(secret)])
    assert r.status_code == 200, r.text
    assert [x["label"] for x in r.json()] == ["false_positive", "false_positive",
                                              "false_positive", "true_positive"]
    assert [x["token_raw"] for x in r.json()] == [never_issued, bad_checksum, "ghp_notours",
                                                  secret]


def test_bad_signatures_unknown_key_ids_and_oversized_reports_are_refused(
        scanner: Scanner) -> None:
    http = scanner.http
    _, secret = scanner.key()
    body = json.dumps([found(secret)]).encode()
    other = Signer()  # a key pair the server does not know, claiming the known id
    cases = {
        "bad_signature": other.headers(body, key_id=KID),
        "unknown_key": other.headers(body, key_id="not-a-github-key"),
        "signature_required": {"Content-Type": "application/json"},
    }
    # a signature of another body
    cases["bad_signature_other_body"] = scanner.signer.headers(body + b" ")
    for name, headers in cases.items():
        r = http.post(REPORTS, content=body, headers=headers)
        assert r.status_code == 401, (name, r.text)
        assert r.json()["error"]["code"] == name.removesuffix("_other_body")
    garbled = scanner.signer.headers(body)
    garbled["Github-Public-Key-Signature"] = "%%%not base64"
    assert http.post(REPORTS, content=body, headers=garbled).status_code == 401
    assert code(http, scanner.verifier, secret) == "VALID"  # nothing happened

    too_many = json.dumps([found("x")] * 1001).encode()
    r = http.post(REPORTS, content=too_many, headers=scanner.signer.headers(too_many))
    assert r.status_code == 422 and "1000" in r.json()["error"]["message"]
    huge = b"[" + b'"' + b"a" * (1 << 20) + b'"]'
    r = http.post(REPORTS, content=huge, headers=scanner.signer.headers(huge))
    assert r.status_code == 413


def test_a_batch_of_100_tokens_is_handled_in_one_request(scanner: Scanner) -> None:
    keys = [scanner.key(f"k{i}") for i in range(40)]
    strangers = [tokens.generate("kp") for _ in range(60)]
    items = [found(s) for _, s in keys] + [found(s) for s in strangers]
    started = time.perf_counter()
    r = scanner.post(items)
    took = time.perf_counter() - started
    assert r.status_code == 200, r.text
    labels = [x["label"] for x in r.json()]
    assert labels == ["true_positive"] * 40 + ["false_positive"] * 60
    assert all(code(scanner.http, scanner.verifier, s) == "REVOKED" for _, s in keys[:5])
    assert len(audit(scanner.kp, scanner.tenant.id, "key.leaked")) == 40
    assert took < 10, took
    print(f"100 tokens (40 keys revoked) in one report: {took * 1000:.0f} ms")


def test_the_lock_policy_locks_instead_of_revoking(scanner: Scanner) -> None:
    http, mk = scanner.http, scanner.tenant.management_key
    r = http.patch(f"/v1/tenants/{scanner.tenant.id}",
                   json={"policy": {"leaked_key_action": "lock"}}, headers=auth(mk))
    assert r.status_code == 200 and r.json()["policy"]["leaked_key_action"] == "lock", r.text
    bad = http.patch(f"/v1/tenants/{scanner.tenant.id}",
                     json={"policy": {"leaked_key_action": "ignore"}}, headers=auth(mk))
    assert bad.status_code == 422
    key_id, secret = scanner.key()
    r = scanner.post([found(secret, "https://gist.github.com/x/1", "gist")])
    assert r.json()[0]["label"] == "true_positive"
    assert code(http, scanner.verifier, secret) == "DISABLED"
    shown = http.get(f"/v1/keys/{key_id}", headers=auth(mk)).json()
    assert shown["enabled"] is False and shown["revoked_at"] is None
    assert shown["leaked"]["url"] == "https://gist.github.com/x/1"
    assert shown["leaked"]["source"] == "gist"
    assert [e.details["reason"] for e in audit(scanner.kp, scanner.tenant.id,
                                               "key.locked")] == ["leaked"]
    assert audit(scanner.kp, scanner.tenant.id, "key.revoked") == []


def test_a_leaked_oauth_token_ends_its_connection(scanner: Scanner) -> None:
    kp, http = scanner.kp, scanner.http
    operator = kp.keys.create(SYSTEM, None, {"name": "platform", "require_tls": False,
                                             "scopes": ["platform:write", "keys:verify"]},
                              operator=True).secret
    partner = approved_app(http, scanner.tenant.management_key, operator)
    with httpx2.Client(base_url=str(http.base_url), timeout=10) as browser:
        grant, verifier = get_code(browser, partner, scanner.tenant.admin_email,
                                   scanner.tenant.admin_password)
    issued = exchange(http, partner, grant, verifier).json()
    access = issued["access_token"]
    r = http.post("/v1/verify", json={"key": access, "tls": True}, headers=auth(operator))
    assert r.json()["code"] == "VALID"
    r = scanner.post([found(issued["refresh_token"], source="commit")])
    assert r.json()[0]["label"] == "true_positive"
    r = http.post("/v1/verify", json={"key": access, "tls": True}, headers=auth(operator))
    assert r.json()["code"] == "REVOKED"
    [event] = audit(kp, scanner.tenant.id, "connection.leaked")
    assert event.details["token_kind"] == "refresh_token" and event.details["source"] == "commit"


class KeysServer:
    """The code host's public-keys URL: serves the current document and counts fetches."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = outer.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/meta/public_keys"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_keys_from_a_url_are_refreshed_on_a_new_key_id_at_most_once_a_minute(
        tmp_path: Path, clock: SettableClock) -> None:
    old, new = Signer("old-key"), Signer("new-key")
    host = KeysServer(document(old))
    try:
        with serving(f"sqlite:///{tmp_path / 'k.db'}", None, tmp_path, clock,
                     secret_scanning_keys_url=host.url) as (kp, http):
            tenant = make_tenant(kp)
            secret = kp.keys.create(SYSTEM, tenant.id, {"name": "x",
                                                        "owner_id": tenant.admin_id}).secret

            def post(signer: Signer, url: str) -> httpx2.Response:
                body = json.dumps([found(secret, url)]).encode()
                return http.post(REPORTS, content=body, headers=signer.headers(body))

            assert post(old, "https://a.example/1").status_code == 200
            assert host.fetches == 1  # loaded once, then cached
            host.text = document(old, new)  # the code host rotates its key
            assert post(new, "https://a.example/2").status_code == 401  # fetched a moment ago
            assert host.fetches == 1
            clock.advance(seconds=61)
            r = post(new, "https://a.example/2")
            assert r.status_code == 200, r.text  # the unknown id made it look again
            assert host.fetches == 2
            for i in range(3):  # made-up ids do not make it fetch again within a minute
                r = post(Signer(f"made-up-{i}"), f"https://a.example/x{i}")
                assert r.status_code == 401
            assert host.fetches == 2
            clock.advance(seconds=61)
            assert post(Signer("made-up-late"), "https://a.example/y").status_code == 401
            assert host.fetches == 3
            clock.advance(hours=1, seconds=1)
            assert post(new, "https://a.example/3").status_code == 200
            assert host.fetches == 4  # hourly refresh
    finally:
        host.close()


def test_not_configured_answers_503(tmp_path: Path) -> None:
    with serving(f"sqlite:///{tmp_path / 'n.db'}", None, tmp_path) as (_kp, http):
        body = b"[]"
        r = http.post(REPORTS, content=body, headers=Signer().headers(body))
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_configured"


def test_cli_report_leak(cli: Cli) -> None:  # noqa: F811
    tenant = cli.json("tenants", "create", "Acme")["id"]
    cli.ok("users", "create", "--tenant", tenant, "--email", "a@example.com", "--role",
           "admin", "--password-stdin", stdin="correct horse battery staple\n")
    key = cli.json("keys", "create", "--tenant", tenant, "--name", "zapier")
    done = cli.json("keys", "report-leak", "--stdin", "--url", "https://chat.example/m/1",
                    "--source", "chat", stdin=key["key"] + "\n")
    assert done == {"label": "true_positive", "kind": "key", "id": key["id"],
                    "tenant_id": tenant, "name": "zapier", "action": "revoked"}
    shown = cli.json("keys", "show", key["id"], "--tenant", tenant)
    assert shown["leaked"]["url"] == "https://chat.example/m/1"
    assert shown["leaked"]["source"] == "chat" and shown["revoked_at"]
    people = cli.ok("keys", "show", key["id"], "--tenant", tenant)
    assert "leaked" in people and "https://chat.example/m/1" in people
    again = cli.ok("keys", "report-leak", key["key"])  # the argument form works too
    assert "already revoked" in again and key["key"] not in again
    stranger = cli.json("keys", "report-leak", "--stdin", stdin=tokens.generate("kp"))
    assert stranger["label"] == "false_positive" and stranger["action"] == "none"
    assert "--stdin" in cli.ok("keys", "report-leak", "--help")
    assert cli.refused("keys", "report-leak").startswith("error: give the secret")
