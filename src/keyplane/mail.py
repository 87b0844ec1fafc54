"""Email over SMTP with the standard library's ``smtplib``: invitations, password resets,
expiry reminders and leak notices. Configured by ``KEYPLANE_SMTP_URL``:

- ``smtp://host:25`` plain SMTP (a local relay);
- ``smtp+starttls://user:password@host:587`` upgrades with STARTTLS, then signs in;
- ``smtps://user:password@host:465`` TLS from the first byte.

The sender address is ``KEYPLANE_MAIL_FROM``.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import unquote, urlsplit

from keyplane.core.ports import Mailer, NoMailer

SCHEMES = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


@dataclass(frozen=True)
class SmtpTarget:
    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None


def parse_smtp_url(url: str) -> SmtpTarget:
    """The mail server named by KEYPLANE_SMTP_URL; ValueError names what is wrong
    (never echoing the password)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError("KEYPLANE_SMTP_URL must start with smtp://, smtp+starttls:// or smtps://")
    if not parts.hostname:
        raise ValueError("KEYPLANE_SMTP_URL names no host")
    try:
        port = parts.port or SCHEMES[scheme]
    except ValueError:
        raise ValueError("KEYPLANE_SMTP_URL has a port that is not a number") from None
    if parts.password is not None and scheme == "smtp":
        raise ValueError("KEYPLANE_SMTP_URL: a password needs smtp+starttls:// or smtps://, "
                         "never plain smtp://")
    return SmtpTarget(
        scheme=scheme, host=parts.hostname, port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


class SmtpMailer:
    """One connection per message: reminders and invitations are few, and a fresh
    connection never inherits a broken one."""

    enabled = True

    def __init__(self, url: str, sender: str, timeout: float = 10.0) -> None:
        self.target = parse_smtp_url(url)
        self.sender = sender
        self.timeout = timeout

    def send(self, to: Sequence[str], subject: str, text: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(to)
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="keyplane")
        msg.set_content(text)
        t = self.target
        tls = ssl.create_default_context()
        smtp: smtplib.SMTP
        if t.scheme == "smtps":
            smtp = smtplib.SMTP_SSL(t.host, t.port, timeout=self.timeout, context=tls)
        else:
            smtp = smtplib.SMTP(t.host, t.port, timeout=self.timeout)
        with smtp:
            if t.scheme == "smtp+starttls":
                smtp.starttls(context=tls)
            if t.username:
                smtp.login(t.username, t.password or "")
            smtp.send_message(msg)


def mailer_from(url: str | None, sender: str, timeout: float = 10.0) -> Mailer:
    return SmtpMailer(url, sender, timeout) if url else NoMailer()
