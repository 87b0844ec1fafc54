"""A child process for test_sigkill.py: builds Keyplane from the ``KEYPLANE_*`` environment and
changes one tenant's keys and the tenant itself as fast as it can (rotations with and without a
grace, edits, locks, revocations with a replacement, tenant renames and policy changes) until it
is killed. Prints ``ready <pid>`` once it has started, then one line per committed change.

Importing Keyplane takes seconds on a busy machine, so this process imports once and forks a
fresh churner for every ``go`` line on its stdin, reporting ``dead`` when that one has ended
(the test kills it with SIGKILL). ``restore FILE`` forks one that restores a backup instead."""

from __future__ import annotations

import os
import random
import sys

from keyplane.bootstrap import build
from keyplane.config import Settings
from keyplane.core.errors import KeyplaneError
from keyplane.core.rights import SYSTEM


def churn(tenant_id: str, owner_id: str) -> None:
    kp = build(Settings())
    rng = random.Random()
    print("ready", os.getpid(), flush=True)
    n = 0
    while True:
        page = kp.keys.list(SYSTEM, tenant_id, limit=50)
        live = [k for k in page.items if k.revoked_at is None]
        roll = rng.random()
        try:
            if not live or roll < 0.1:
                kp.keys.create(SYSTEM, tenant_id, {"name": f"churn {n}", "owner_id": owner_id,
                                                   "scopes": ["keys:read"],
                                                   "require_tls": False})
            elif roll < 0.5:
                kp.keys.rotate(SYSTEM, tenant_id, rng.choice(live).id,
                               {"grace_period_seconds": rng.choice([0, 3600])})
            elif roll < 0.65:
                kp.keys.update(SYSTEM, tenant_id, rng.choice(live).id,
                               {"name": f"edited {n}", "enabled": rng.random() < 0.8})
            elif roll < 0.8:
                kp.keys.revoke(SYSTEM, tenant_id, rng.choice(live).id)
            else:
                kp.tenants.update(SYSTEM, tenant_id, {"name": f"Tenant {n}", "policy": {
                    "require_tls_default": rng.random() < 0.5}})
        except KeyplaneError as exc:  # e.g. a name rule; the loop goes on
            print("refused", exc.code, flush=True)
        n += 1
        print("ok", n, flush=True)


def restore(path: str) -> None:
    kp = build(Settings())
    print("ready", os.getpid(), flush=True)
    with open(path) as lines:
        kp.backup.restore(lines)
    print("done", flush=True)


def main(tenant_id: str, owner_id: str) -> None:
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] not in ("go", "restore"):
            break
        pid = os.fork()
        if pid == 0:
            try:
                if command[0] == "go":
                    churn(tenant_id, owner_id)
                else:
                    restore(command[1])
            finally:
                os._exit(1)
        os.waitpid(pid, 0)
        print("dead", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
