"""The operator's scope catalogue: seeded on first run (defaults or a TOML file), edited by API."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from keyplane.core import scopes as sc
from keyplane.core.changes import ChangeKind
from keyplane.core.errors import Conflict, NotFound, ValidationError
from keyplane.core.rights import Caller
from keyplane.services import validate as v
from keyplane.services.context import Context


def load_toml(path: Path) -> dict[str, str]:
    """``[scopes]`` table of ``"area:action" = "description"``."""
    data = tomllib.loads(path.read_text())
    entries = data.get("scopes", {})
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: [scopes] must be a table")
    for name, desc in entries.items():
        if not sc.SCOPE_RE.match(name) or not isinstance(desc, str):
            raise ValueError(f"{path}: bad scope entry {name!r}")
    return dict(entries)


class CatalogueService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def seed(self, extra: dict[str, str] | None = None) -> None:
        """Add the built-in scopes and ``extra`` where missing; existing entries stay."""
        wanted = sc.default_catalogue() | (extra or {})
        with self.ctx.uow() as uow:
            have = uow.scopes.all()
            missing = {k: d for k, d in wanted.items() if k not in have}
            for name, desc in missing.items():
                uow.scopes.put(name, desc)
            if missing:
                self.ctx.changed(uow, ChangeKind.CATALOGUE, "*")
            uow.commit()

    def list(self) -> dict[str, str]:
        return dict(self.ctx.catalogue().entries)

    def put(self, caller: Caller, name: Any, body: dict[str, Any]) -> dict[str, str]:
        caller.require("platform:write")
        v.only_fields(body, ("description",))
        if not isinstance(name, str) or not sc.SCOPE_RE.match(name):
            raise ValidationError("name must look like area:action (lowercase)", field="name")
        if sc.is_management(name):
            raise Conflict("built-in management scopes cannot be changed", field="name")
        desc = v.text(body.get("description"), "description", max_len=200)
        with self.ctx.uow() as uow:
            uow.scopes.put(name, desc)
            self.ctx.audit(uow, caller, "scope.saved", name, tenant_id=None)
            self.ctx.changed(uow, ChangeKind.CATALOGUE, name)
            uow.commit()
        return {"name": name, "description": desc}

    def delete(self, caller: Caller, name: str) -> None:
        """Remove a scope: keys that hold it lose it at once (effective scopes exclude it)."""
        caller.require("platform:write")
        if sc.is_management(name):
            raise Conflict("built-in management scopes cannot be removed", field="name")
        with self.ctx.uow() as uow:
            if name not in uow.scopes.all():
                raise NotFound("no such scope")
            uow.scopes.delete(name)
            self.ctx.audit(uow, caller, "scope.deleted", name, tenant_id=None)
            self.ctx.changed(uow, ChangeKind.CATALOGUE, name)
            uow.commit()
