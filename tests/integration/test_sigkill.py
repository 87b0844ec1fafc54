"""SIGKILL during a rotation, an edit, a revocation or a tenant change leaves the old state or
the new one, never a mix (issue 14): a child process (tests/integration/churn.py) changes keys
and the tenant through the services as fast as it can on the real PostgreSQL; it is killed
with SIGKILL at random moments, again and again; then every key's secrets, its audit entries,
the change log and the webhook outbox must still agree with each other."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from keyplane.bootstrap import Keyplane, build
from keyplane.config import Settings
from keyplane.core.rights import SYSTEM
from tests.conftest import make_tenant
from tests.integration.procs import postgres_database, worker_env

pytestmark = [pytest.mark.postgres]

ROUNDS = 10


def kill_churners(churn: subprocess.Popen[bytes], rounds: int, rng: random.Random) -> int:
    """Has ``churn`` fork a churner ``rounds`` times and kills each with SIGKILL after a random
    moment; returns the changes they reported committed."""
    assert churn.stdin is not None and churn.stdout is not None
    committed = 0
    for _ in range(rounds):
        churn.stdin.write(b"go\n")
        churn.stdin.flush()
        line = churn.stdout.readline().split()
        assert line and line[0] == b"ready", line
        time.sleep(rng.uniform(0.1, 0.8))
        os.kill(int(line[1]), signal.SIGKILL)
        while (line := churn.stdout.readline().split()) != [b"dead"]:
            assert line, "the churn process ended"
            committed += line[0] == b"ok"
    return committed


def test_sigkill_mid_change_leaves_old_or_new_state(tmp_path: Path) -> None:
    rng = random.Random()
    with postgres_database() as url:
        data_dir = tmp_path / "data"
        kp = build(Settings(database_url=url, data_dir=data_dir,
                            webhook_allow_private_targets=True), migrate_db=True)
        try:
            kp.catalogue.seed()
            tenant = make_tenant(kp)
            before = {k.id for k in kp.keys.list(SYSTEM, tenant.id).items}  # no webhook yet
            kp.webhooks.create(SYSTEM, tenant.id, {"url": "http://127.0.0.1:9/hook",
                                                   "events": ["key.*"]})
            for i in range(4):
                kp.keys.create(SYSTEM, tenant.id, {"name": f"start {i}", "require_tls": False,
                                                   "owner_id": tenant.admin_id,
                                                   "scopes": ["keys:read"]})
            env = worker_env(url, data_dir, webhook_worker="false",
                             webhook_allow_private_targets="true")
            env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
            with (tmp_path / "churn.log").open("wb") as log, subprocess.Popen(
                    [sys.executable, "-m", "tests.integration.churn", tenant.id,
                     tenant.admin_id], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=log) as churn:
                try:
                    committed = kill_churners(churn, ROUNDS, rng)
                finally:
                    churn.kill()
            assert committed > ROUNDS  # the kills landed among changes, not before them
            check_invariants(kp.engine, tenant.id, before)
        finally:
            kp.close()


def check_invariants(engine: sa.Engine, tenant_id: str, before: set[str]) -> None:
    with engine.connect() as conn:
        def rows(sql: str, **params: object) -> list[sa.Row[tuple[object, ...]]]:
            return list(conn.execute(sa.text(sql), params))

        keys = rows("SELECT id, start, revoked_at, enabled FROM api_keys WHERE tenant_id = :t",
                    t=tenant_id)
        assert len(keys) > 4
        secrets: dict[str, list[tuple[object, object]]] = {}
        for key_id, start, expires_at in rows(
                "SELECT key_id, start, expires_at FROM key_secrets"):
            secrets.setdefault(str(key_id), []).append((start, expires_at))
        audit = rows("SELECT action, target FROM audit_events WHERE tenant_id = :t",
                     t=tenant_id)
        changes = Counter((str(k), str(r)) for k, r in rows("SELECT kind, ref FROM changes"))
        audited = Counter((str(a), str(t)) for a, t in audit)
        events = Counter()
        for (payload,) in rows("SELECT payload FROM webhook_events WHERE tenant_id = :t",
                               t=tenant_id):
            body = json.loads(str(payload))
            events[(body["type"], body["data"]["object"]["id"])] += 1
        deliveries = rows("SELECT count(*) FROM webhook_deliveries WHERE tenant_id = :t",
                          t=tenant_id)[0][0]

        for key_id, start, revoked_at, enabled in keys:
            mine = secrets.get(str(key_id), [])
            current = [s for s, expires in mine if expires is None]
            # a rotation's new secret, the key's start and the old secret's deadline together
            assert len(current) == 1, (key_id, mine)
            assert current[0] == start, (key_id, mine, start)
            assert len(mine) <= 2, (key_id, mine)
            # a change is audited, logged for the verifiers and queued for webhooks, or none
            changed = sum(n for (action, target), n in audited.items()
                          if target == key_id and action != "key.created")
            assert changes[("key", str(key_id))] == changed, key_id
            assert audited[("key.created", str(key_id))] == 1
            revocations = audited[("key.revoked", str(key_id))]
            assert revocations == (1 if revoked_at is not None else 0), key_id
            if revoked_at is not None:
                assert not enabled
        key_actions = Counter({k: n for k, n in audited.items() if k[0].startswith("key.")
                               and not (k[0] == "key.created" and k[1] in before)})
        assert events == key_actions
        assert deliveries == sum(events.values())
        assert changes[("tenant", tenant_id)] == audited[("tenant.updated", tenant_id)]
        assert audited[("tenant.updated", tenant_id)] > 0 or sum(key_actions.values()) > 0


def inflated_export(kp: Keyplane, tenant_id: str, path: Path, extra_audit: int) -> int:
    """A backup of ``tenant_id`` with ``extra_audit`` more audit entries, so that a restore
    takes long enough to be killed in the middle; returns the audit entries it holds."""
    buffer = io.StringIO()
    kp.backup.export(buffer, tenant_id=tenant_id)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    end = lines.pop()
    template = next(r for r in lines if r.get("section") == "audit_events")
    copies = [{"section": "audit_events",
               "row": {**template["row"], "id": f"evt_copy{i:08d}"}} for i in range(extra_audit)]
    at = max(i for i, r in enumerate(lines) if r.get("section") == "audit_events") + 1
    lines[at:at] = copies
    end["counts"]["audit_events"] += extra_audit
    path.write_text("".join(json.dumps(r) + "\n" for r in [*lines, end]))
    return int(end["counts"]["audit_events"])


def test_sigkill_mid_restore_leaves_nothing_or_everything(tmp_path: Path) -> None:
    rng = random.Random()
    with postgres_database() as source_url, postgres_database() as url:
        data_dir = tmp_path / "data"
        source = build(Settings(database_url=source_url, data_dir=data_dir), migrate_db=True)
        try:
            source.catalogue.seed()
            tenant = make_tenant(source)
            for i in range(20):
                source.keys.create(SYSTEM, tenant.id, {"name": f"k{i}", "require_tls": False,
                                                       "owner_id": tenant.admin_id})
            backup = tmp_path / "tenant.jsonl"
            audit_rows = inflated_export(source, tenant.id, backup, 10_000)
        finally:
            source.close()
        kp = build(Settings(database_url=url, data_dir=data_dir), migrate_db=True)
        try:
            kp.catalogue.seed()

            def counts() -> tuple[int, int, int]:
                with kp.engine.connect() as conn:
                    def one(sql: str) -> int:
                        return int(conn.execute(sa.text(sql), {"t": tenant.id}).scalar_one())
                    return (one("SELECT count(*) FROM tenants WHERE id = :t"),
                            one("SELECT count(*) FROM api_keys WHERE tenant_id = :t"),
                            one("SELECT count(*) FROM audit_events WHERE tenant_id = :t"))

            env = worker_env(url, data_dir)
            env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
            killed_mid_way = 0
            with (tmp_path / "restore.log").open("wb") as log, subprocess.Popen(
                    [sys.executable, "-m", "tests.integration.churn", tenant.id,
                     tenant.admin_id], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=log) as churn:
                assert churn.stdin is not None and churn.stdout is not None
                try:
                    for round_ in range(6):
                        churn.stdin.write(f"restore {backup}\n".encode())
                        churn.stdin.flush()
                        line = churn.stdout.readline().split()
                        assert line and line[0] == b"ready", line
                        if round_ < 5:  # the last one is left to finish
                            # early: on a quiet machine a restore takes well under a second
                            time.sleep(rng.uniform(0.01, 0.25))
                            with contextlib.suppress(ProcessLookupError):  # done already
                                os.kill(int(line[1]), signal.SIGKILL)
                        said = []
                        while (line := churn.stdout.readline().split()) != [b"dead"]:
                            assert line, "the churn process ended"
                            said.append(line)
                        found = counts()
                        # nothing or everything: the tenant, its 21 keys, every audit entry
                        assert found in ((0, 0, 0), (1, 21, audit_rows)), found
                        if found[0] == 1:
                            break
                        killed_mid_way += 1
                finally:
                    churn.kill()
            assert killed_mid_way >= 1  # at least one kill landed before the commit
            assert counts()[0] == 1  # and the restore, once left alone, completed
        finally:
            kp.close()

