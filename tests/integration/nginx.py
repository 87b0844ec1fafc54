"""Debian's nginx on loopback, unprivileged, with a throwaway prefix and configuration, in front
of an upstream that echoes the request headers it gets (standing in for a product written in
any language).

The ``auth_request`` configuration is the one the README gives. Without nginx the tests are
skipped, except in CI (``KEYPLANE_TEST_REQUIRE_SERVICES``), where they fail."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import REQUIRE_SERVICES, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# the README's snippet (upstreams "keyplane" and "product" are defined in CONF)
SITE = """
    # the product: every request asks Keyplane first
    location / {
        auth_request /_keyplane;
        # the identity Keyplane answered, for the upstream (client-sent ones are replaced)
        auth_request_set $kp_key_id $upstream_http_x_keyplane_key_id;
        auth_request_set $kp_tenant_id $upstream_http_x_keyplane_tenant_id;
        auth_request_set $kp_owner_id $upstream_http_x_keyplane_owner_id;
        auth_request_set $kp_scopes $upstream_http_x_keyplane_scopes;
        proxy_set_header X-Keyplane-Key-Id $kp_key_id;
        proxy_set_header X-Keyplane-Tenant-Id $kp_tenant_id;
        proxy_set_header X-Keyplane-Owner-Id $kp_owner_id;
        proxy_set_header X-Keyplane-Scopes $kp_scopes;
        # refusals: Keyplane's status, body and headers (auth_request itself knows only
        # 401 and 403, and turns anything else, such as 429, into 500)
        auth_request_set $kp_status $upstream_http_x_keyplane_status;
        auth_request_set $kp_body $upstream_http_x_keyplane_error_body;
        auth_request_set $kp_www_authenticate $upstream_http_www_authenticate;
        auth_request_set $kp_retry_after $upstream_http_retry_after;
        auth_request_set $kp_rl_limit $upstream_http_ratelimit_limit;
        auth_request_set $kp_rl_remaining $upstream_http_ratelimit_remaining;
        auth_request_set $kp_rl_reset $upstream_http_ratelimit_reset;
        error_page 401 = @keyplane_401;
        error_page 403 = @keyplane_403;
        error_page 500 = @keyplane_other;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://product;
    }

    location = /_keyplane {
        internal;
        proxy_pass http://keyplane/v1/forward-auth;
        proxy_http_version 1.1;  # keep connections to Keyplane open
        proxy_set_header Connection "";
        proxy_method GET;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Original-URI $request_uri;
        # this proxy is the edge: the client's address is the socket's, never a header it sent
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
    }

    location @keyplane_401 {
        default_type application/json;
        return 401 $kp_body;
    }
    location @keyplane_403 {
        default_type application/json;
        add_header WWW-Authenticate $kp_www_authenticate always;
        return 403 $kp_body;
    }
    location @keyplane_other {
        default_type application/json;
        add_header Retry-After $kp_retry_after always;
        add_header RateLimit-Limit $kp_rl_limit always;
        add_header RateLimit-Remaining $kp_rl_remaining always;
        add_header RateLimit-Reset $kp_rl_reset always;
        if ($kp_status = 429) {
            return 429 $kp_body;
        }
        return 503 '{"error":{"code":"keyplane_unavailable",
                    "message":"key verification is unavailable; retry shortly"}}';
    }
"""

CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    upstream keyplane {{ server {keyplane}; keepalive 32; keepalive_timeout 4s; }}
    upstream product {{ server {upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
{site}
    }}
}}
"""


def missing_nginx() -> str | None:
    if not os.path.exists(NGINX):
        return f"{NGINX} is not installed (apt-get install -y nginx-light)"
    return None


class Echo(BaseHTTPRequestHandler):
    """The upstream: answers every request with the headers it received, as JSON."""

    def _answer(self) -> None:
        body = json.dumps({"method": self.command, "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def echo_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def nginx(keyplane: str, upstream: str, site: str = SITE) -> Iterator[str]:
    """nginx on a free loopback port in front of ``upstream``, asking ``keyplane`` (host:port);
    yields its base URL. ``site``: the server block's locations (the README's by default)."""
    missing = missing_nginx()
    if missing:
        if REQUIRE_SERVICES:
            pytest.fail(missing)
        pytest.skip(missing)
    prefix = Path(tempfile.mkdtemp(prefix="kp-nginx-"))
    prefix.chmod(0o755)  # run as root (CI), the workers are "nobody": let them in
    (prefix / "tmp").mkdir(mode=0o777)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(CONF.format(prefix=prefix, keyplane=keyplane, upstream=upstream, port=port,
                                site=site))
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode()}"  # type: ignore[union-attr]
                                   f"{(prefix / 'error.log').read_text(errors='replace')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not listen in time")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(prefix, ignore_errors=True)
