"""Where a webhook may point: https only, no credentials, and no private, loopback or link-local
address, checked when the URL is saved and again at every connection (DNS rebinding). Tests
elsewhere allow private targets to reach their loopback receiver; these do not."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core.webhooks import Outcome
from keyplane.outbound import HttpSender, SystemResolver
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.integration.helpers import create_key
from tests.integration.procs import wait_until
from tests.webhook_receiver import Receiver


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Keyplane, httpx2.Client, Tenant]]:
    """One server without KEYPLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS for the whole module."""
    tmp = tmp_path_factory.mktemp("strict")
    with serving(f"sqlite:///{tmp / 'keyplane.db'}", None, tmp,
                 webhook_poll_seconds=0.05) as (kp, http):
        yield kp, http, make_tenant(kp)


@pytest.fixture(autouse=True)
def _resolver(strict: tuple[Keyplane, httpx2.Client, Tenant]) -> Iterator[None]:
    kp = strict[0]
    real = kp.webhooks.resolver
    yield
    kp.webhooks.resolver = real


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.mark.parametrize(("url", "says"), [
    ("http://example.com/hook", "https"),
    ("ftp://example.com/hook", "https"),
    ("https://user:pw@example.com/hook", "credentials"),
    ("https://token@example.com/hook", "credentials"),
    ("https://127.0.0.1/hook", "loopback"),
    ("https://localhost:8443/hook", "loopback"),
    ("https://[::1]/hook", "IPv6"),
    ("https://[::ffff:127.0.0.1]/hook", "IPv6"),
    ("https://10.1.2.3/hook", "private"),
    ("https://192.168.0.10/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]/hook", "IPv6"),
    ("https://0.0.0.0/hook", "unspecified"),
    ("https://100.64.0.1/hook", "public"),
    ("https:///hook", "host"),
    ("https://exa mple.com/", "spaces"),
    ("https://bücher.example/hook", "xn--"),
    ("https://example.com:70000/hook", "not a valid URL"),
    ("https://host.invalid/hook", "does not resolve"),
])
def test_unsafe_urls_are_refused_when_saved(
    strict: tuple[Keyplane, httpx2.Client, Tenant], url: str, says: str
) -> None:
    _, http, tenant = strict
    r = http.post("/v1/webhooks", json={"url": url, "events": ["*"]},
                  headers=auth(tenant.management_key))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "url"
    assert says in r.json()["error"]["message"]


def test_an_edit_to_an_unsafe_url_is_refused_too(
    strict: tuple[Keyplane, httpx2.Client, Tenant]
) -> None:
    kp, http, tenant = strict
    kp.webhooks.resolver = _Public("hooks.example")
    r = http.post("/v1/webhooks", json={"url": "https://hooks.example/h", "events": ["*"]},
                  headers=auth(tenant.management_key))
    assert r.status_code == 201, r.text
    r = http.patch(f"/v1/webhooks/{r.json()['id']}", json={"url": "https://127.0.0.1/h"},
                   headers=auth(tenant.management_key))
    assert r.status_code == 422 and "loopback" in r.json()["error"]["message"]


class _Public:
    """A DNS server that answers a public address for ``name`` (at the time a URL is saved)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def resolve(self, host: str, port: int) -> list[str]:
        return ["93.184.216.34"] if host == self.name else SystemResolver().resolve(host, port)


def test_a_name_that_rebinds_to_loopback_is_refused_at_delivery(
    strict: tuple[Keyplane, httpx2.Client, Tenant], receiver: Receiver
) -> None:
    kp, http, tenant = strict
    # saved while "localhost" looked public; by delivery time it resolves to 127.0.0.1
    kp.webhooks.resolver = _Public("localhost")
    r = http.post("/v1/webhooks", json={"url": f"https://localhost:{receiver.port}/hooks",
                                        "events": ["key.*"]},
                  headers=auth(tenant.management_key))
    assert r.status_code == 201, r.text
    hook = r.json()
    create_key(http, tenant.management_key)

    def first() -> dict[str, object]:
        items = http.get(f"/v1/webhooks/{hook['id']}/deliveries",
                         headers=auth(tenant.management_key)).json()["items"]
        return dict(items[0]) if items else {}

    wait_until(lambda: first().get("attempts") == 1, 10)
    d = first()
    assert d["status"] == "pending" and d["response_status"] is None
    assert "127.0.0.1" in str(d["last_error"]) and "loopback" in str(d["last_error"])
    assert receiver.snapshot() == []  # nothing ever connected


def test_the_sender_checks_the_address_it_connects_to(receiver: Receiver) -> None:
    strict = HttpSender(timeout=2, max_response_bytes=1024, allow_private=False)
    relaxed = HttpSender(timeout=2, max_response_bytes=1024, allow_private=True)
    try:
        for url in (receiver.url, receiver.url.replace("127.0.0.1", "localhost")):
            refused = strict.send(url, {}, b"{}")
            assert refused.status_code is None and "loopback" in str(refused.error)
        assert receiver.snapshot() == []
        ok = relaxed.send(receiver.url, {}, b"{}")
        assert ok == Outcome(200, ok.latency_ms)
        assert len(receiver.snapshot()) == 1
    finally:
        strict.close()
        relaxed.close()


def test_redirects_are_not_followed_and_big_answers_are_cut(receiver: Receiver) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.support import free_port

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path == "/redirect":
                self.send_response(307)
                self.send_header("location", receiver.url)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("content-length", str(50_000_000))
            self.end_headers()
            try:
                for _ in range(50_000):
                    self.wfile.write(b"x" * 1000)
            except OSError:
                pass  # the client stopped reading: what we want

        def log_message(self, format: str, *args: object) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sender = HttpSender(timeout=5, max_response_bytes=64 * 1024, allow_private=True)
    try:
        redirected = sender.send(f"http://127.0.0.1:{port}/redirect", {}, b"{}")
        assert redirected.status_code == 307 and not redirected.ok
        assert receiver.snapshot() == []  # the redirect was not followed
        big = sender.send(f"http://127.0.0.1:{port}/big", {}, b"{}")
        assert big.status_code == 200 and big.latency_ms < 5000
    finally:
        sender.close()
        server.shutdown()
        server.server_close()
