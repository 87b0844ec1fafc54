"""What an import reads and reports: a source's key as a :class:`Candidate`, the
:class:`ScopeMap` that gives it scopes, and the per-row :class:`Outcome` of an
:class:`ImportReport` (services/imports.py decides and writes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keyplane.core.errors import ValidationError
from keyplane.core.model import RateLimit


@dataclass(frozen=True)
class ScopeMap:
    """Which Keyplane scopes an imported key gets. ``rename``: a scope name in the source →
    Keyplane scopes (names not listed are kept); ``names`` / ``prefixes``: by the key's name or
    source prefix; ``default``: for a key the other rules give no scope."""

    default: tuple[str, ...] | None = None
    names: dict[str, list[str]] = field(default_factory=dict)
    prefixes: dict[str, list[str]] = field(default_factory=dict)
    rename: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any) -> ScopeMap:
        if not isinstance(data, dict):
            raise ValidationError("the scope map must be a table", field="scope_map")
        unknown = set(data) - {"default", "names", "prefixes", "rename"}
        if unknown:
            raise ValidationError(f"the scope map has no section {sorted(unknown)[0]!r} "
                                  "(default, names, prefixes, rename)", field="scope_map")

        def scopes(value: Any, where: str) -> list[str]:
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise ValidationError(f"scope map: {where} must be a list of scope names",
                                      field="scope_map")
            return list(value)

        def table(name: str) -> dict[str, list[str]]:
            value = data.get(name, {})
            if not isinstance(value, dict):
                raise ValidationError(f"scope map: {name} must be a table", field="scope_map")
            return {str(k): scopes(s, f"{name}.{k}") for k, s in value.items()}

        default = data.get("default")
        return cls(default=tuple(scopes(default, "default")) if default is not None else None,
                   names=table("names"), prefixes=table("prefixes"), rename=table("rename"))

    def scopes_for(self, row: Candidate) -> list[str] | None:
        if row.scopes is not None:
            out: list[str] = []
            for scope in row.scopes:
                out += self.rename.get(scope, [scope])
            return list(dict.fromkeys(out))
        if row.name in self.names:
            return self.names[row.name]
        if row.lookup_prefix is not None and row.lookup_prefix in self.prefixes:
            return self.prefixes[row.lookup_prefix]
        return list(self.default) if self.default is not None else None


@dataclass
class Candidate:
    """One key read from a source. ``secret`` (CSV only) is the plaintext: hashed and dropped by
    :meth:`ImportService.run`, never stored."""

    number: int  # row or line number, for the summary
    source_ref: str  # the key's identity in its source (never a secret)
    name: str
    created_at: datetime | None = None
    expires_at: datetime | None = None
    scopes: list[str] | None = None  # the source's scopes (None: the scope map decides)
    owner: str | None = None  # an email or a principal id in the target tenant
    description: str = ""
    allowed_ips: list[str] = field(default_factory=list)
    require_tls: bool | None = None
    enabled: bool = True
    ratelimit: RateLimit | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    secret: str | None = None
    digest: str | None = None  # with pepper_id: a Keyplane digest (another Keyplane's export)
    pepper_id: str | None = None
    key_id: str | None = None  # kept from another Keyplane's export
    prefix: str | None = None
    start: str | None = None
    foreign: bool = False
    legacy_scheme: str | None = None
    legacy_digest: str | None = None
    lookup_prefix: str | None = None  # e.g. djangorestframework-api-key's prefix
    refused: str | None = None  # a reason already found while reading the source

    @property
    def label(self) -> str:
        if self.lookup_prefix:
            return f"{self.name} ({self.lookup_prefix})"
        return self.name


@dataclass(frozen=True)
class Outcome:
    number: int
    label: str
    status: str  # imported, would_import, present, refused
    reason: str = ""
    key_id: str | None = None

    def out(self) -> dict[str, Any]:
        return {"row": self.number, "name": self.label, "status": self.status,
                "reason": self.reason, "key_id": self.key_id}


@dataclass
class ImportReport:
    source: str
    tenant_id: str
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "tenant_id": self.tenant_id, "dry_run": self.dry_run,
                "imported": self.count("imported"), "would_import": self.count("would_import"),
                "present": self.count("present"), "refused": self.count("refused"),
                "rows": [o.out() for o in self.outcomes]}
