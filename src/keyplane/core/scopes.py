"""Scopes: ``area:action`` strings from an operator-configured catalogue.

``area:write`` implies ``area:read``. Management scopes (``keys:*``, ``members:*``, ``tenant:*``)
and the operator's ``platform:*`` scopes live in the same catalogue.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SCOPE_RE = re.compile(r"\A[a-z][a-z0-9_-]{0,39}:[a-z][a-z0-9_-]{0,19}\Z")

DATA_AREAS: dict[str, str] = {
    "contacts": "Contacts",
    "calendars": "Calendars",
    "conversations": "Conversations",
    "opportunities": "Opportunities",
    "forms": "Forms",
    "payments": "Payments",
}

MANAGEMENT_SCOPES: dict[str, str] = {
    "keys:read": "View API keys",
    "keys:write": "Create, edit, rotate and revoke API keys",
    "keys:verify": "Verify API keys and access tokens",
    "members:read": "View members, service accounts and groups",
    "members:write": "Manage members, service accounts and groups",
    "tenant:read": "View tenant settings",
    "tenant:write": "Change tenant settings and policy",
}

PLATFORM_SCOPES: dict[str, str] = {
    "platform:read": "View every tenant (operator only)",
    "platform:write": "Manage tenants and the scope catalogue (operator only)",
}
OPERATOR_KEY_SCOPES = frozenset({"keys:verify", *PLATFORM_SCOPES})  # all an operator key holds


def default_catalogue() -> dict[str, str]:
    entries: dict[str, str] = {}
    for area, label in DATA_AREAS.items():
        entries[f"{area}:read"] = f"View {label.lower()}"
        entries[f"{area}:write"] = f"Edit {label.lower()}"
    entries.update(MANAGEMENT_SCOPES)
    entries.update(PLATFORM_SCOPES)
    return entries


def is_management(scope: str) -> bool:
    return scope in MANAGEMENT_SCOPES or scope in PLATFORM_SCOPES


def implied(scope: str) -> frozenset[str]:
    """The scope itself and what it implies (``x:write`` ⇒ ``x:read``)."""
    area, _, action = scope.partition(":")
    if action == "write":
        return frozenset({scope, f"{area}:read"})
    return frozenset({scope})


def expand(scopes: Iterable[str]) -> frozenset[str]:
    out: set[str] = set()
    for s in scopes:
        out |= implied(s)
    return frozenset(out)


def satisfies(granted: Iterable[str], required: Iterable[str]) -> bool:
    return expand(granted).issuperset(required)


@dataclass(frozen=True)
class Catalogue:
    """The scopes the operator allows, with a description for people (consent pages, docs)."""

    entries: Mapping[str, str] = field(default_factory=default_catalogue)

    def __contains__(self, scope: object) -> bool:
        return scope in self.entries

    def describe(self, scope: str) -> str:
        return self.entries.get(scope, scope)

    def data_scopes(self) -> frozenset[str]:
        return frozenset(s for s in self.entries if not is_management(s))

    def unknown(self, scopes: Iterable[str]) -> list[str]:
        return [s for s in scopes if s not in self.entries]


def normalise(scopes: Iterable[str]) -> list[str]:
    """Deduplicated and sorted, for storage and display."""
    return sorted(set(scopes))
