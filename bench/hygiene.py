"""Key hygiene for a tenant with 10,000 keys: the report and the unused-key policy's run.

Setup (not measured): a fresh Keyplane (SQLite file, or a throwaway PostgreSQL schema with
``--postgres``) and one tenant with 10,000 keys written through the key repository (the same
seed as ``console_keys.py``: a third never used, the rest last used 0-119 days ago).

Measured, in process (the service, as ``GET /v1/reports/keys`` and ``keyplane keys report``
call it): the first page (50 entries), the whole report (every page of 200, as the CLI reads
it), and one run of ``revoke_unused_after_days = 30`` (first run: it warns every idle key, each
in its own transaction).

    .venv/bin/python bench/hygiene.py [--keys 10000] [--postgres] [--json]
"""

from __future__ import annotations

import json
import time
from typing import Any

from console_keys import database, seed


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from keyplane.bootstrap import build
    from keyplane.config import Settings
    from keyplane.core.rights import SYSTEM

    with database(args.postgres) as (url, schema, tmp):
        kp = build(Settings(data_dir=tmp / "data", database_url=url), schema=schema,
                   migrate_db=True)
        try:
            seed(kp, args.keys)
            tenant = kp.tenants.list(SYSTEM, limit=1, cursor=None).items[0]
            out: dict[str, Any] = {"keys": args.keys,
                                   "database": "postgresql" if args.postgres else "sqlite"}
            kp.hygiene.report(SYSTEM, tenant.id)  # warm up
            started = time.perf_counter()
            first = kp.hygiene.report(SYSTEM, tenant.id, limit=50)
            out["first_page_ms"] = round((time.perf_counter() - started) * 1000, 1)
            started = time.perf_counter()
            flagged, cursor = 0, None
            while True:
                page = kp.hygiene.report(SYSTEM, tenant.id, limit=200, cursor=cursor)
                flagged += len(page.items)
                cursor = page.next_cursor
                if cursor is None:
                    break
            out["whole_report_ms"] = round((time.perf_counter() - started) * 1000, 1)
            out["flagged"] = flagged
            assert len(first.items) == 50
            kp.tenants.update(SYSTEM, tenant.id, {"policy": {"revoke_unused_after_days": 30}})
            started = time.perf_counter()
            run = kp.hygiene.run(force=True)
            assert run is not None
            out["policy_run_ms"] = round((time.perf_counter() - started) * 1000, 1)
            out["warned"] = len(run.warned)
            started = time.perf_counter()
            again = kp.hygiene.run(force=True)
            assert again is not None and not again.warned
            out["policy_rerun_ms"] = round((time.perf_counter() - started) * 1000, 1)
        finally:
            kp.close()
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"  {k:<20} {v}")


if __name__ == "__main__":
    main()
