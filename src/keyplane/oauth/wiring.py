"""What the OAuth server and the fresh-code check read of a built Keyplane.

The connected-app services themselves are typed fields of :class:`keyplane.bootstrap.Keyplane`,
built by ``bootstrap.build()`` (the composition root) like every other part; this protocol is
the narrow view that ``oauth/server.py`` and ``web/fresh.py`` are given, so that they depend on
five fields and not on the whole container.
"""

from __future__ import annotations

from typing import Protocol

from keyplane.core.apps import CredentialPrefixes
from keyplane.services.apps import AppService
from keyplane.services.connections import ConnectionService
from keyplane.services.sessions import SessionService


class ConnectedApps(Protocol):
    """The connected-app parts of a Keyplane (read only)."""

    @property
    def prefixes(self) -> CredentialPrefixes: ...
    @property
    def issuer(self) -> str: ...  # the RFC 8414 issuer: settings.base_url, byte for byte
    @property
    def apps(self) -> AppService: ...
    @property
    def connections(self) -> ConnectionService: ...
    @property
    def sessions(self) -> SessionService: ...
