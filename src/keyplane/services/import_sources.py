"""What ``keyplane import`` reads, as :class:`~keyplane.services.imports.Candidate` rows.

* :func:`drf_rows`: djangorestframework-api-key's table (``rest_framework_api_key_apikey``),
  read by ``storage/sql/drf.py``. Each key keeps its prefix and its legacy digest.
* :func:`csv_rows`: plaintext keys and their settings, one per row, with a header naming the
  columns (:data:`CSV_COLUMNS`). A plaintext key is never kept: the import hashes it and drops it.
* :func:`keyplane_rows`: another Keyplane's ``keyplane export`` file: digests only.

A row that cannot be read is yielded with ``refused`` set (the reason names the column and never
quotes a secret), so that the summary lists it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from keyplane.core import legacy as lg
from keyplane.core.errors import ValidationError
from keyplane.core.model import RateLimit
from keyplane.services.imports import Candidate

CSV_REQUIRED = ("name", "key")
CSV_COLUMNS = ("name", "key", "scopes", "expires_at", "created_at", "owner", "description",
               "allowed_ips", "require_tls", "enabled")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}
MAX_FIELD = 4096


def _when(value: Any, column: str) -> datetime | None:
    """An ISO 8601 time (a date alone is midnight UTC; no offset is UTC), or None if empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        at = value
    else:
        try:
            at = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{column}: not an ISO 8601 time") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _words(value: str) -> list[str]:
    return [w for w in value.replace(",", " ").split() if w]


# -- djangorestframework-api-key ----------------------------------------------------------------

def drf_rows(records: Iterable[dict[str, Any]]) -> Iterator[Candidate]:
    """Rows of ``rest_framework_api_key_apikey`` (id, prefix, hashed_key, name, created,
    expiry_date, revoked) as candidates carrying the legacy digest."""
    for number, r in enumerate(records, 1):
        prefix = str(r.get("prefix") or "")
        row = Candidate(number=number, source_ref=prefix, name=str(r.get("name") or "").strip()
                        or f"drf {prefix}", prefix="drf", start=prefix[:8], foreign=True,
                        legacy_scheme=lg.DRF, legacy_digest=str(r.get("hashed_key") or ""),
                        lookup_prefix=prefix)
        try:
            row.created_at = _when(r.get("created"), "created")
            row.expires_at = _when(r.get("expiry_date"), "expiry_date")
        except ValueError as exc:
            row.refused = str(exc)
        if lg.drf_prefix(f"{prefix}.x") is None:
            row.refused = "prefix: not a djangorestframework-api-key prefix"
        elif r.get("revoked"):
            row.refused = "revoked: the key is revoked in the source"
        elif row.refused is None:
            row.refused = lg.drf_supported(row.legacy_digest or "")
        yield row


# -- CSV ----------------------------------------------------------------------------------------

def csv_rows(lines: Iterable[str]) -> Iterator[Candidate]:
    """The rows of a CSV file with a header (:data:`CSV_COLUMNS`; ``name`` and ``key``
    required). Raises :class:`ValidationError` for a header it cannot use."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise ValidationError("the CSV file is empty (it needs a header row)", field="file")
    columns = [h.strip().lower() for h in header]
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise ValidationError(f"the CSV header has an unknown column {unknown[0][:40]!r} "
                              f"(known: {', '.join(CSV_COLUMNS)})", field="file")
    missing = [c for c in CSV_REQUIRED if c not in columns]
    if missing:
        raise ValidationError(f"the CSV header has no {missing[0]!r} column", field="file")
    if len(set(columns)) != len(columns):
        raise ValidationError("the CSV header names a column twice", field="file")
    for number, values in enumerate(reader, 2):  # line 1 is the header
        if not any(v.strip() for v in values):
            continue
        yield _csv_row(number, columns, values)


def _csv_row(number: int, columns: list[str], values: list[str]) -> Candidate:
    cells = dict(zip(columns, values, strict=False))
    name = cells.get("name", "").strip()
    row = Candidate(number=number, source_ref="", name=name or f"row {number}")
    row.secret = cells.get("key", "").strip() or None
    try:
        if len(values) != len(columns):
            raise ValueError(f"the row has {len(values)} cells for {len(columns)} columns")
        if any(len(v) > MAX_FIELD for v in values):
            raise ValueError(f"a cell is longer than {MAX_FIELD} characters")
        if row.secret is None:
            raise ValueError("key: empty")
        if not name:
            raise ValueError("name: empty")
        if "scopes" in cells and cells["scopes"].strip():
            row.scopes = _words(cells["scopes"])
        row.expires_at = _when(cells.get("expires_at"), "expires_at")
        row.created_at = _when(cells.get("created_at"), "created_at")
        row.owner = cells.get("owner", "").strip() or None
        row.description = cells.get("description", "").strip()
        row.allowed_ips = _words(cells.get("allowed_ips", ""))
        row.require_tls = _flag(cells.get("require_tls"), "require_tls")
        enabled = _flag(cells.get("enabled"), "enabled")
        row.enabled = True if enabled is None else enabled
    except ValueError as exc:
        row.refused = str(exc)
    return row


def _flag(value: str | None, column: str) -> bool | None:
    if value is None or not value.strip():
        return None
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{column}: write true or false")


def count_rows(lines: Iterable[str]) -> int:
    """Data rows of a CSV file (for the progress bar): quoted line breaks counted right."""
    return max(0, sum(1 for values in csv.reader(lines) if any(v.strip() for v in values)) - 1)


# -- another Keyplane's export ------------------------------------------------------------------

def keyplane_rows(lines: Iterable[str]) -> list[Candidate]:
    """The keys of a ``keyplane export`` file (its api_keys with their current secret's digest;
    owners by email from its principals). Operator keys, revoked keys and keys whose secret is
    missing are refused."""
    emails: dict[str, str] = {}
    keys: list[tuple[int, dict[str, Any]]] = []
    digests: dict[str, dict[str, Any]] = {}
    origins: dict[str, dict[str, Any]] = {}
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
            if record.get("format") != "keyplane-export":
                raise ValidationError("not a Keyplane export (the first line is not its "
                                      "header)", field="file")
            continue
        section, row = record.get("section"), record.get("row")
        if not isinstance(row, dict):
            continue
        if section == "principals" and row.get("email"):
            emails[str(row.get("id"))] = str(row["email"])
        elif section == "api_keys":
            keys.append((number, row))
        elif section == "key_secrets" and row.get("expires_at") is None:
            digests[str(row.get("key_id"))] = row  # the current secret, not one in a grace
        elif section == "key_imports":
            origins[str(row.get("key_id"))] = row  # imported there: its format, legacy digest
    out = []
    for number, r in keys:
        key_id = str(r.get("id") or "")
        row = Candidate(number=number, source_ref=key_id, key_id=key_id,
                        name=str(r.get("name") or key_id), description=str(
                            r.get("description") or ""),
                        scopes=[str(s) for s in r.get("scopes") or []],
                        owner=emails.get(str(r.get("owner_id"))),
                        allowed_ips=[str(i) for i in r.get("allowed_ips") or []],
                        require_tls=bool(r.get("require_tls", True)),
                        enabled=bool(r.get("enabled", True)),
                        meta=dict(r.get("meta") or {}), prefix=str(r.get("prefix") or ""),
                        start=str(r.get("start") or ""))
        secret = digests.get(key_id)
        origin = origins.get(key_id) or {}
        row.foreign = bool(origin.get("foreign_format"))
        if secret is None and origin.get("legacy_digest") and origin.get("legacy_lookup"):
            # imported there from elsewhere and not used since: its legacy digest comes along
            scheme, _, prefix = str(origin["legacy_lookup"]).partition(":")
            row.legacy_scheme, row.lookup_prefix = scheme, prefix
            row.legacy_digest = str(origin["legacy_digest"])
        try:
            row.created_at = _when(r.get("created_at"), "created_at")
            row.expires_at = _when(r.get("expires_at"), "expires_at")
            rl = r.get("ratelimit")
            if isinstance(rl, dict):
                row.ratelimit = RateLimit(int(rl["limit"]), int(rl["window_seconds"]))
        except (ValueError, KeyError, TypeError) as exc:
            row.refused = str(exc) if isinstance(exc, ValueError) else "ratelimit: malformed"
        if r.get("tenant_id") is None:
            row.refused = "an operator key (it belongs to no tenant)"
        elif r.get("revoked_at") is not None:
            row.refused = "revoked_at: the key is revoked in the source"
        elif secret is None and row.legacy_digest is None:
            row.refused = "the export holds no current secret for this key"
        elif row.refused is None and secret is not None:
            row.digest = str(secret.get("digest") or "")
            row.pepper_id = str(secret.get("pepper_id") or "")
        out.append(row)
    return out
