"""``keyplane import csv`` of 100,000 plaintext keys: rows per second.

Setup (not measured): a fresh Keyplane (SQLite file, or a throwaway PostgreSQL schema with
``--postgres``), one tenant and its admin, and a CSV of ``--rows`` keys (half in Keyplane's
format, half foreign ``sk_live_…`` keys), each with a name, two scopes, an expiry and the owner's
email.

Measured, in process (the service the CLI calls, without the progress bar): the first import
(hash each key, decide each row, write in batches of 500, all in one transaction) and a second
import of the same file (every row found "already present").

    .venv/bin/python bench/import_csv.py [--rows 100000] [--postgres] [--json]
"""

from __future__ import annotations

import csv
import json
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))


def write_csv(path: Path, rows: int, owner_email: str, prefix: str = "kp") -> None:
    """``rows`` keys with their settings (what an operator's export from another system holds)."""
    from keyplane.core.tokens import generate

    expires = (datetime.now(UTC) + timedelta(days=180)).replace(microsecond=0).isoformat()
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["name", "key", "scopes", "expires_at", "created_at", "owner"])
        for i in range(rows):
            key = generate(prefix) if i % 2 else "sk_live_" + secrets.token_urlsafe(24)
            writer.writerow([f"integration {i}", key, "contacts:read calendars:read", expires,
                             "2024-03-01T12:00:00+00:00", owner_email])


def main() -> None:
    import argparse

    from console_keys import database

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from keyplane.bootstrap import build
    from keyplane.config import Settings
    from keyplane.core.model import PrincipalKind
    from keyplane.core.rights import SYSTEM
    from keyplane.services.import_sources import csv_rows

    with database(args.postgres) as (url, schema, tmp):
        kp = build(Settings(data_dir=tmp / "data", database_url=url), schema=schema,
                   migrate_db=True)
        try:
            kp.catalogue.seed()
            tenant = kp.tenants.create(SYSTEM, {"name": "Bench"})
            kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER,
                                 {"email": "owner@example.com", "role": "admin"})
            path = tmp / "keys.csv"
            write_csv(path, args.rows, "owner@example.com", kp.ctx.key_prefix)
            out: dict[str, Any] = {"rows": args.rows,
                                   "database": "postgresql" if args.postgres else "sqlite"}
            for run in ("first", "again"):
                with path.open(newline="") as lines:
                    started = time.perf_counter()
                    report = kp.imports.run("csv", tenant.id, csv_rows(lines))
                    seconds = time.perf_counter() - started
                done = report.count("imported" if run == "first" else "present")
                assert done == args.rows, report.as_dict()["rows"][:3]
                out[f"{run}_seconds"] = round(seconds, 2)
                out[f"{run}_rows_per_second"] = round(args.rows / seconds)
        finally:
            kp.close()
    if args.json:
        print(json.dumps(out))
        return
    print(f"import csv, {out['rows']:,} keys ({out['database']}):")
    print(f"  first import: {out['first_seconds']} s, {out['first_rows_per_second']:,} rows/s")
    print(f"  second run (all already present): {out['again_seconds']} s, "
          f"{out['again_rows_per_second']:,} rows/s")


if __name__ == "__main__":
    main()
