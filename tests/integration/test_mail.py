"""Keyplane's emails reach a real SMTP server (aiosmtpd on loopback), only after the change
they belong to commits, and a mail outage never undoes a change or leaks a link to the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from keyplane.bootstrap import build
from keyplane.config import Settings
from keyplane.mail import SmtpMailer
from tests.conftest import make_settings
from tests.smtp_server import Inbox, MailServer
from tests.support import free_port, sqlite_url


def test_a_message_arrives_with_sender_recipients_subject_and_text(
    mail_server: MailServer,
) -> None:
    mailer = SmtpMailer(mail_server.url, "Keyplane <noreply@example.test>")
    mailer.send(["ada@example.test", "bob@example.test"], "Your key expires in 7 days",
                "The integration CRM sync stops on 2026-12-09.")
    [msg] = mail_server.inbox.wait(1)
    assert msg["From"] == "Keyplane <noreply@example.test>"
    assert msg["To"] == "ada@example.test, bob@example.test"
    assert msg["Subject"] == "Your key expires in 7 days"
    assert "CRM sync stops on 2026-12-09" in Inbox.body(msg)


def test_mail_is_sent_after_commit_and_never_for_a_rolled_back_change(
    mail_server: MailServer, tmp_path: Path
) -> None:
    kp = build(make_settings(tmp_path, sqlite_url(tmp_path), smtp_url=mail_server.url),
               migrate_db=True)
    try:
        with pytest.raises(RuntimeError), kp.ctx.uow() as uow:
            assert kp.ctx.mail_after_commit(uow, ["gone@example.test"], "never", "never")
            raise RuntimeError("the change fails")
        with kp.ctx.uow() as uow:
            kp.ctx.mail_after_commit(uow, ["ada@example.test", "ada@example.test"],
                                     "Invitation", "https://kp.example/invite#one-time")
            assert mail_server.inbox.messages == []  # not before the commit
            uow.commit()
        [msg] = mail_server.inbox.wait(1)
        assert msg["To"] == "ada@example.test"  # one copy per address
    finally:
        kp.close()


def test_a_mail_outage_keeps_the_change_and_logs_no_link(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"smtp://127.0.0.1:{free_port()}"  # nothing listens there
    kp = build(make_settings(tmp_path, sqlite_url(tmp_path), smtp_url=dead), migrate_db=True)
    try:
        with caplog.at_level(logging.WARNING, logger="keyplane.mail"), kp.ctx.uow() as uow:
            kp.ctx.mail_after_commit(uow, ["ada@example.test"], "Reset your password",
                                     "https://kp.example/reset/SECRET-LINK")
            uow.commit()
        assert "mail_failed" in caplog.text
        assert "SECRET-LINK" not in caplog.text and "ada@example.test" not in caplog.text
    finally:
        kp.close()


def test_without_a_mail_server_nothing_is_sent_and_callers_are_told(tmp_path: Path) -> None:
    kp = build(make_settings(tmp_path, sqlite_url(tmp_path)), migrate_db=True)
    try:
        with kp.ctx.uow() as uow:
            assert kp.ctx.mail_after_commit(uow, ["ada@example.test"], "s", "t") is False
            uow.commit()
    finally:
        kp.close()


@pytest.mark.parametrize(("url", "says"), [
    ("http://mail.example:25", "must start with smtp://"),
    ("smtp://", "names no host"),
    ("smtp://user:hunter2@mail.example", "needs smtp+starttls:// or smtps://"),
    ("smtps://mail.example:port", "port that is not a number"),
])
def test_a_bad_smtp_url_is_refused_at_start_naming_the_setting(
    tmp_path: Path, url: str, says: str
) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(data_dir=tmp_path, smtp_url=url)
    assert "KEYPLANE_SMTP_URL" in str(err.value) and says in str(err.value)
    assert "hunter2" not in str(err.value)
