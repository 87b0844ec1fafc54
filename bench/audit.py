"""The hash-chained audit log: what appending costs when writers contend for one tenant's chain
head, and how fast ``keyplane audit verify`` walks a chain.

Setup (not measured): a fresh Keyplane (SQLite file, or a throwaway PostgreSQL schema with
``--postgres``) and one tenant.

Measured, in process, through ``Context.audit`` (as every service writes its entries):

* **appends**: ``--entries`` entries, each in its own transaction, by ``--writers`` threads
  into the same tenant's chain (the worst case: every append locks the same head); entries/s
  and the p50/p99 of one transaction. ``--baseline`` writes the same transactions with a
  ``changes`` row instead (the change log, unchained), for the chain's own share.
* **verify**: the whole chain recomputed (``AuditService.verify``), entries/s.

    .venv/bin/python bench/audit.py [--entries 2000] [--writers 4] [--postgres] [--json]
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import Any

from console_keys import database


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from keyplane.bootstrap import build
    from keyplane.config import Settings
    from keyplane.core.rights import SYSTEM

    with database(args.postgres) as (url, schema, tmp):
        kp = build(Settings(data_dir=tmp / "data", database_url=url, webhook_worker=False),
                   schema=schema, migrate_db=True)
        try:
            tenant = kp.tenants.create(SYSTEM, {"name": "Bench"})

            def write(chained: bool) -> tuple[float, list[float]]:
                per_writer = args.entries // args.writers
                took: list[float] = []
                lock = threading.Lock()

                def run(w: int) -> None:
                    mine: list[float] = []
                    for i in range(per_writer):
                        t0 = time.perf_counter()
                        with kp.ctx.uow() as uow:
                            if chained:
                                kp.ctx.audit(uow, SYSTEM, "bench.wrote", f"w{w}-{i}",
                                             tenant_id=tenant.id, n=i,
                                             subject={"id": f"w{w}-{i}", "n": i},
                                             before={"id": f"w{w}-{i}", "n": i - 1})
                            else:
                                uow.changes.append("bench", f"w{w}-{i}")
                            uow.commit()
                        mine.append(time.perf_counter() - t0)
                    with lock:
                        took.extend(mine)

                threads = [threading.Thread(target=run, args=(w,)) for w in range(args.writers)]
                start = time.perf_counter()
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                return time.perf_counter() - start, took

            base_elapsed, base_took = write(False)
            elapsed, took = write(True)
            t0 = time.perf_counter()
            result = kp.audit.verify(tenant.id)
            verify_s = time.perf_counter() - t0
            assert result.ok, [b.describe() for b in result.breaks]
            entries = result.chains[0].entries
        finally:
            kp.close()

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000

    out: dict[str, Any] = {
        "database": "postgresql" if args.postgres else "sqlite",
        "writers": args.writers,
        "chained_appends_per_s": round(len(took) / elapsed),
        "chained_p50_ms": round(statistics.median(took) * 1000, 2),
        "chained_p99_ms": round(pct(took, 0.99), 2),
        "unchained_writes_per_s": round(len(base_took) / base_elapsed),
        "unchained_p50_ms": round(statistics.median(base_took) * 1000, 2),
        "verify_entries": entries,
        "verify_entries_per_s": round(entries / verify_s),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:28} {v}")


if __name__ == "__main__":
    main()
