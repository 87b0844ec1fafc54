"""Expiry reminders across real processes on PostgreSQL: two ``keyplane serve`` workers and a
``keyplane worker`` all run the scheduler every second, on the real clock; a key expiring in 7
days gets one ``key.expiring`` webhook and one email, however often they scan."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from keyplane.bootstrap import build
from keyplane.config import Settings
from keyplane.core.rights import SYSTEM
from tests.conftest import make_tenant
from tests.integration.procs import Worker, postgres_database, wait_until, worker_env
from tests.smtp_server import MailServer
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.postgres


def test_three_processes_scanning_every_second_send_one_reminder(tmp_path: Path) -> None:
    receiver = Receiver().start()
    mail = MailServer().start()
    data_dir = tmp_path / "data"
    try:
        with postgres_database() as url:
            kp = build(Settings(database_url=url, data_dir=data_dir, webhook_worker=False,
                                webhook_allow_private_targets=True, expiry_interval_seconds=0),
                       migrate_db=True)
            try:
                kp.catalogue.seed()
                tenant = make_tenant(kp)
                hook = kp.webhooks.create(SYSTEM, tenant.id, {"url": receiver.url,
                                                              "events": ["key.expiring"]})
                receiver.secrets.append(hook.secret)
                key = kp.keys.create(SYSTEM, tenant.id, {
                    "name": "Nightly export", "owner_id": tenant.admin_id,
                    "scopes": ["contacts:read"], "expires_in_days": 7})
            finally:
                kp.close()
            env = worker_env(url, data_dir, webhook_allow_private_targets="true",
                             webhook_poll_seconds=0.1, expiry_interval_seconds=1,
                             smtp_url=mail.url)
            log = (tmp_path / "worker.log").open("wb")
            cli = subprocess.Popen([str(Path(sys.executable).with_name("keyplane")), "worker"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            serving = [Worker(env, tmp_path, f"serve-{i}") for i in range(2)]
            try:
                for w in serving:
                    w.spawn()
                for w in serving:
                    w.wait_ready(timeout=120)
                wait_until(lambda: len(receiver.snapshot()) >= 1, 30)
                mail.inbox.wait(1, timeout=30)
                time.sleep(4)  # every process scans about four more times
                assert len(receiver.snapshot()) == 1
                assert len(mail.inbox.messages) == 1
            finally:
                for w in serving:
                    w.kill()
                cli.terminate()
                cli.wait(timeout=20)
            got = receiver.snapshot()[0]
            assert got.valid_with == [True] and got.type == "key.expiring"
            assert got.payload["data"]["object"]["id"] == key.key.id
            assert "Nightly export" in str(mail.inbox.messages[0]["Subject"])
            assert "Traceback" not in (tmp_path / "worker.log").read_text()
    finally:
        receiver.stop()
        mail.stop()
