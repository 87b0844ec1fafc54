"""Backup and restore: every record of Keyplane (or of one tenant) as JSON lines.

The file is a header line, one line per row (``{"section": …, "row": {…}}``) and an end line
with the counts, so that a truncated file is refused rather than half restored. It holds what
the database holds: key digests with their pepper ids, password hashes, sealed webhook
secrets; never a secret. A restored key verifies with its original secret when the restoring
server has the same pepper.

A restore is one transaction into a database that does not hold these records yet: when any
id already exists it refuses, naming it, and writes nothing. Shared rows (the scope catalogue,
another owner's app a tenant's connections use) are kept as they are when present. After the
commit every verifier drops its caches.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from keyplane.core.changes import ChangeKind
from keyplane.core.errors import Conflict, NotFound, ValidationError
from keyplane.core.ports import BackupRepo, BackupRepos
from keyplane.core.rights import SYSTEM
from keyplane.services.context import Context

FORMAT = "keyplane-export"
VERSION = 1
BATCH = 500


@dataclass
class Report:
    tenant_id: str | None
    counts: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)  # shared rows already present
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "counts": self.counts, "kept": self.kept,
                "dry_run": self.dry_run}


class BackupService:
    def __init__(self, ctx: Context, repos: BackupRepos) -> None:
        self.ctx = ctx
        self.repos = repos

    def export(self, out: IO[str], *, tenant_id: str | None = None,
               revision: str | None = None) -> Report:
        """Writes the backup to ``out`` from one consistent read."""
        report = Report(tenant_id)
        with self.ctx.uow(readonly=True) as uow:
            if tenant_id is not None and uow.tenants.get(tenant_id) is None:
                raise NotFound(f"no tenant {tenant_id}", field="tenant")
            repo = self.repos(uow)
            out.write(_line({"format": FORMAT, "version": VERSION, "tenant_id": tenant_id,
                             "schema": revision, "created_at": self.ctx.clock.now().isoformat()}))
            for section in repo.sections():
                count = 0
                for row, shared in repo.read(section, tenant_id):
                    record: dict[str, Any] = {"section": section, "row": row}
                    if shared:
                        record["shared"] = True
                    out.write(_line(record))
                    count += 1
                report.counts[section] = count
            out.write(_line({"end": True, "counts": report.counts}))
        return report

    def restore(self, lines: Iterable[str], *, dry_run: bool = False) -> Report:
        """Inserts every row of a backup in one transaction, or nothing."""
        records = iter(_parse(lines))
        header = next(records, None)
        if header is None or header.get("format") != FORMAT:
            raise ValidationError("not a Keyplane export (the first line is not its header)",
                                  field="file")
        if header.get("version") != VERSION:
            raise ValidationError(f"export format version {header.get('version')} is not "
                                  f"supported (this Keyplane reads version {VERSION})",
                                  field="file")
        report = Report(header.get("tenant_id"), dry_run=dry_run)
        with self.ctx.uow() as uow:
            repo = self.repos(uow)
            order = repo.sections()
            pending: list[dict[str, Any]] = []
            section: str | None = None
            done: set[str] = set()
            ended = False
            expected: Any = None
            for number, record in records:
                if ended:
                    raise ValidationError(f"line {number}: data after the end line",
                                          field="file")
                if record.get("end") is True:
                    ended = True
                    expected = record.get("counts")
                    continue
                name, row = record.get("section"), record.get("row")
                if name not in order or not isinstance(row, dict):
                    raise ValidationError(f"line {number}: unknown section {name!r}",
                                          field="file")
                unknown = set(row) - repo.columns(name)
                if unknown:
                    raise ValidationError(
                        f"line {number}: {name} has no column {sorted(unknown)[0]!r} in this "
                        "database (upgrade it with `keyplane db upgrade` first)", field="file")
                if name != section:
                    if name in done:
                        raise ValidationError(f"line {number}: section {name} out of order",
                                              field="file")
                    self._flush(repo, section, pending, report)
                    if section is not None:
                        done.add(section)
                    section, pending = name, []
                pending.append({"row": row, "shared": record.get("shared") is True})
                if len(pending) >= BATCH:
                    self._flush(repo, section, pending, report)
                    pending = []
            if not ended:
                raise ValidationError("the file ends before its end line (truncated?)",
                                      field="file")
            self._flush(repo, section, pending, report)
            written = {k: report.counts.get(k, 0) + report.kept.get(k, 0) for k in order}
            if any(written[k] != n for k, n in (expected or {}).items() if k in written):
                raise ValidationError("the file's rows do not match its end line's counts",
                                      field="file")
            self.ctx.audit(uow, SYSTEM, "backup.restored", report.tenant_id or "*",
                           tenant_id=None, counts=report.counts)
            if dry_run:
                return report  # leaving the block rolls it all back
            self.ctx.changed(uow, ChangeKind.ALL, "*")
            uow.commit()
        return report

    def _flush(self, repo: BackupRepo, section: str | None, pending: list[dict[str, Any]],
               report: Report) -> None:
        if section is None or not pending:
            return
        present = set(repo.existing(section, [p["row"] for p in pending]))
        keys = [repo.key(section, p["row"]) for p in pending]
        clash = [k for k, p in zip(keys, pending, strict=True) if k in present and not p["shared"]]
        if clash:
            more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
            raise Conflict(f"the database already holds {section} {clash[0]}{more}; restore "
                           "into an empty database (or delete these records first)",
                           field=section)
        fresh = [p["row"] for k, p in zip(keys, pending, strict=True) if k not in present]
        repo.insert(section, fresh)
        report.counts[section] = report.counts.get(section, 0) + len(fresh)
        if len(fresh) != len(pending):
            report.kept[section] = report.kept.get(section, 0) + len(pending) - len(fresh)


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"


def _parse(lines: Iterable[str]) -> Iterable[Any]:
    first = True
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError:
            raise ValidationError(f"line {number} is not JSON", field="file") from None
        if not isinstance(record, dict):
            raise ValidationError(f"line {number} is not a JSON object", field="file")
        if first:
            first = False
            yield record
        else:
            yield number, record
