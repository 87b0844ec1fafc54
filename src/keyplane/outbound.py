"""Outbound webhook requests that cannot be pointed at the inside of the network.

Every connection resolves the host itself, refuses it when any address is private, loopback or
link-local (unless private targets are allowed) and connects to the address it checked, so a
DNS answer that changes between validation and delivery (DNS rebinding) changes nothing. TLS
still verifies the certificate for the URL's host name (SNI and hostname check use the name).
No proxy from the environment, no redirects followed, timeouts on every phase and a cap on how
much of the answer is read.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable

import httpcore2
import httpx2

from keyplane import __version__
from keyplane.core.webhooks import Outcome, refused_address


class Refused(httpcore2.ConnectError):
    """The target resolves to an address webhooks may not reach."""


class SystemResolver:
    def resolve(self, host: str, port: int) -> list[str]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    """Raises :class:`Refused` when any of ``addresses`` must not be reached."""
    for address in addresses:
        why = refused_address(address)
        if why is not None:
            raise Refused(f"{host} resolves to {address}, {why}; webhooks may not target "
                          "private networks")


class GuardedBackend(httpcore2.SyncBackend):
    """``connect_tcp`` to an address checked at connect time."""

    def __init__(self, resolver: SystemResolver, *, allow_private: bool) -> None:
        self.resolver = resolver
        self.allow_private = allow_private

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
                    ) -> httpcore2.NetworkStream:
        try:
            addresses = self.resolver.resolve(host, port)
        except OSError as exc:
            raise httpcore2.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not self.allow_private:
            check_addresses(host, addresses)
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address,
                                           socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore2.ConnectError(f"{host} has no address")


class HttpSender:
    """POSTs one webhook request; answers an :class:`Outcome`, never raises for the network."""

    def __init__(self, *, timeout: float, max_response_bytes: int, allow_private: bool,
                 resolver: SystemResolver | None = None, max_connections: int = 20) -> None:
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        transport = httpx2.HTTPTransport(trust_env=False)
        # the same pool httpx2 builds, with the guarded network backend
        transport._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_connections=max_connections, max_keepalive_connections=max_connections,
            network_backend=GuardedBackend(resolver or SystemResolver(),
                                           allow_private=allow_private),
        )
        self.client = httpx2.Client(transport=transport, timeout=httpx2.Timeout(timeout),
                                    follow_redirects=False, trust_env=False,
                                    headers={"user-agent": f"Keyplane-Webhooks/{__version__}"})

    def send(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        started = time.monotonic()
        deadline = started + self.timeout

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            with self.client.stream("POST", url, headers=headers, content=body) as response:
                read = 0
                for chunk in response.iter_raw():  # read a bounded part of the answer
                    read += len(chunk)
                    if read > self.max_response_bytes or time.monotonic() > deadline:
                        break
                return Outcome(response.status_code, elapsed())
        except httpx2.TimeoutException:
            return Outcome(None, elapsed(), "timed out")
        except httpx2.HTTPError as exc:
            # a refused target arrives as a ConnectError carrying Refused's message
            return Outcome(None, elapsed(), f"{type(exc).__name__}: {exc}"[:300])

    def close(self) -> None:
        self.client.close()
