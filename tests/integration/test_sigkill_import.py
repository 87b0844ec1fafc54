"""SIGKILL during ``keyplane import`` leaves none of the imported keys or all of them, never some
(issue 14), on SQLite and PostgreSQL: the real command imports a CSV in batches; it is killed
with SIGKILL at a random moment after its progress bar shows a batch written, again and again;
then the tenant holds no imported key (nor an import record, a secret or an audit entry of the
import), or every one. A run left alone then imports them all, once."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from bench.import_csv import write_csv

from keyplane.bootstrap import build
from keyplane.config import Settings
from keyplane.services.imports import BATCH
from tests.conftest import make_tenant
from tests.integration.procs import postgres_database
from tests.integration.test_backup import KEYPLANE, cli_env, run

ROWS = 10 * BATCH
ROUNDS = 4
PROGRESS = re.compile(rb"(\d+)/(\d+)")
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


@contextlib.contextmanager
def database_url(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'keyplane.db'}"
    else:
        with postgres_database() as url:
            yield url


class Import:
    """``keyplane import csv`` as a subprocess whose progress bar (forced on: a terminal would
    show it) is read as it is drawn."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([str(KEYPLANE), "import", "csv", *args],
                                     env={**env, "FORCE_COLOR": "1"}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.written = 0  # rows the bar shows done: written in the import's transaction
        self.output = b""
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            with self.changed:
                self.output += chunk
                shown = [int(done) for done, _total in
                         PROGRESS.findall(ANSI.sub(b"", self.output[-4096:]))]
                self.written = max([self.written, *shown])
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_written(self, rows: int, timeout: float) -> bool:
        """Whether the bar showed ``rows`` done while the command still ran."""
        with self.changed:
            return self.changed.wait_for(
                lambda: self.written >= rows or not self.reader.is_alive(), timeout=timeout
            ) and self.written >= rows and self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite",
                                     pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_mid_import_leaves_no_imported_key_or_all_of_them(backend: str,
                                                                   tmp_path: Path) -> None:
    rng = random.Random()
    with database_url(backend, tmp_path) as url:
        data_dir = tmp_path / "data"
        kp = build(Settings(database_url=url, data_dir=data_dir), migrate_db=True)
        try:
            kp.catalogue.seed()
            tenant = make_tenant(kp)
            source = tmp_path / "keys.csv"
            write_csv(source, ROWS, tenant.admin_email)
            env = cli_env(url, data_dir)

            def found() -> tuple[int, int, int, int]:
                """Keys, import records, secrets and rows named by import audit entries."""
                with kp.engine.connect() as conn:
                    def one(sql: str) -> int:
                        return int(conn.execute(sa.text(sql), {"t": tenant.id}).scalar_one())
                    keys = one("SELECT count(*) FROM api_keys WHERE tenant_id = :t")
                    records = one("SELECT count(*) FROM key_imports i JOIN api_keys k "
                                  "ON k.id = i.key_id WHERE k.tenant_id = :t")
                    secrets = one("SELECT count(*) FROM key_secrets s JOIN api_keys k "
                                  "ON k.id = s.key_id WHERE k.tenant_id = :t")
                    details = conn.execute(sa.text(
                        "SELECT details FROM audit_events WHERE tenant_id = :t "
                        "AND action = 'keys.imported'"), {"t": tenant.id}).scalars()
                    audited = sum(len((json.loads(d) if isinstance(d, str) else d)["key_ids"])
                                  for d in details)
                    return keys, records, secrets, audited

            nothing = found()  # the tenant's own admin key
            everything = tuple(n + ROWS for n in nothing)
            killed_mid_way = 0
            for _ in range(ROUNDS):
                one = Import(env, str(source), "--tenant", tenant.id)
                try:
                    # a batch is written (the transaction is open) when the bar shows it
                    if one.wait_written(BATCH, timeout=120):
                        time.sleep(rng.uniform(0.0, 0.1))
                        mid_way = one.proc.poll() is None
                    else:
                        mid_way = False
                finally:
                    one.kill()
                now = found()
                assert now in (nothing, everything), (now, one.output[-2000:])
                if now == everything:  # it finished before the kill: left to complete
                    break
                killed_mid_way += mid_way
            assert killed_mid_way >= 1  # kills landed after rows were written, before commit
            done = run(env, "import", "csv", str(source), "--tenant", tenant.id, "--json")
            assert done.returncode == 0, done.stderr
            assert found() == everything
        finally:
            kp.close()
