"""The invitation walk in a real browser (Playwright driving Debian's Chromium): an admin invites
an email → the email arrives at a real SMTP server (aiosmtpd) → the invitee opens the link, sets
a password, enrols TOTP (the test computes codes with pyotp on the server's clock) → signs out →
signs in with password and code. axe-core checks each new page.

Skipped when /usr/bin/chromium or Playwright is missing, except in CI
(``KEYPLANE_TEST_REQUIRE_SERVICES=1``), where that is a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.conftest import make_tenant, serving
from tests.integration.test_console_auth import path_of
from tests.integration.test_console_browser import accessible, no_sideways_scroll, shot
from tests.smtp_server import Inbox, MailServer
from tests.support import SettableClock

pytestmark = [pytest.mark.browser, pytest.mark.slow]
__all__ = ["shot"]  # the screenshot fixture, shared with the console's browser suite
PASSWORD = "the invitee's own passphrase"


def test_an_invitee_joins_sets_a_password_enrols_totp_and_signs_in_with_it(
        chromium: Any, database: tuple[str, str | None], tmp_path: Path,
        mail_server: MailServer, clock: SettableClock, shot: Callable[..., None]) -> None:
    url, schema = database
    with serving(url, schema, tmp_path, clock=clock, smtp_url=mail_server.url) as (kp, http):
        tenant = make_tenant(kp)
        base = str(http.base_url).rstrip("/")
        admin = chromium.new_context(base_url=base)
        page = admin.new_page()
        page.goto("/members")
        page.get_by_label("Email").fill(tenant.admin_email)
        page.get_by_label("Password").fill(tenant.admin_password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/members")
        page.get_by_role("link", name="Invite member").click()
        page.wait_for_url("**/invitations/new")
        accessible(page)
        page.get_by_label("Email").fill("robin@example.com")
        page.get_by_label("Member", exact=True).check()
        page.get_by_role("button", name="Send invitation").click()
        page.get_by_role("heading", name="Invitation made").wait_for()
        shown = page.locator("#one-time-link").text_content() or ""
        assert "We emailed it to robin@example.com" in page.content()
        accessible(page)
        shot(page, "console-invitation")
        page.goto("/members")
        waiting = page.get_by_role("region", name="Invitations waiting")
        assert "robin@example.com" in (waiting.text_content() or "")
        accessible(page)
        admin.close()

        mail = mail_server.inbox.wait(1)[0]
        link = path_of(Inbox.body(mail))
        assert link == path_of(shown)  # the link mailed is the one the admin saw

        invitee = chromium.new_context(base_url=base, viewport={"width": 390, "height": 844})
        page = invitee.new_page()
        page.goto(link)
        page.get_by_role("heading", name="Join Acme").wait_for()
        accessible(page)
        no_sideways_scroll(page)
        page.get_by_label("Your name").fill("Robin")
        page.get_by_label("New password").fill("short")
        page.get_by_role("button", name="Create my account").click()
        page.get_by_text("Choose a password of at least 12 characters.").wait_for()
        page.get_by_label("New password").fill(PASSWORD)
        page.get_by_role("button", name="Create my account").click()
        page.wait_for_url("**/signin?done=joined")
        page.get_by_text("Your account is ready").wait_for()
        page.get_by_label("Email").fill("robin@example.com")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/keys")

        page.get_by_role("link", name="Two-factor").click()
        page.wait_for_url("**/account/two-factor")
        page.get_by_role("button", name="Set up two-factor").click()
        secret = (page.locator("#totp-secret").text_content() or "").strip()
        assert "otpauth://totp/" in (page.locator("#totp-uri").text_content() or "")
        accessible(page)
        shot(page, "console-two-factor-setup")
        totp = pyotp.TOTP(secret)
        page.get_by_label("Authentication code").fill(totp.at(clock.now()))
        page.get_by_role("button", name="Turn on two-factor").click()
        page.get_by_role("heading", name="Your recovery codes").wait_for()
        assert page.locator("#recovery-codes li").count() == 10
        accessible(page)
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/signin")

        clock.advance(seconds=30)  # the next code (the one used to enrol works once)
        page.get_by_label("Email").fill("robin@example.com")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Enter your sign-in code").wait_for()
        accessible(page)
        no_sideways_scroll(page)
        shot(page, "console-signin-code")
        page.get_by_label("Authentication code").fill(totp.at(clock.now()))
        page.get_by_role("button", name="Verify").click()
        page.wait_for_url("**/keys")
        assert "Robin" in (page.locator(".who").text_content() or "")  # signed in as Robin
        invitee.close()

        visitor = chromium.new_context(base_url=base)
        page = visitor.new_page()
        page.goto("/signin")
        page.get_by_role("link", name="Forgot password?").click()
        page.wait_for_url("**/signin/forgot")
        accessible(page)
        page.get_by_label("Email").fill("robin@example.com")
        page.get_by_role("button", name="Email me a link").click()
        page.get_by_text("If that address has a Keyplane account").wait_for()
        accessible(page)
        reset = path_of(Inbox.body(mail_server.inbox.wait(2)[1]))
        page.goto(reset)
        page.get_by_role("heading", name="Set a new password").wait_for()
        accessible(page)
        visitor.close()
