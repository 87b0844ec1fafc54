"""Share links in a real browser (Playwright driving Debian's /usr/bin/chromium): the CLI makes
the link (``keyplane keys create|rotate --share``), the page decrypts in the browser with the key
from the fragment, and a second opening, an expired link and a withdrawn link each fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2
import pytest

from keyplane.bootstrap import Keyplane
from keyplane.core import sealed, tokens
from keyplane.core.rights import SYSTEM
from keyplane.storage.sql.safety import shares
from tests.conftest import Tenant, auth, make_tenant, serving
from tests.support import SettableClock

pytestmark = [pytest.mark.browser, pytest.mark.slow]
KEYPLANE = Path(sys.executable).with_name("keyplane")


class Site:
    def __init__(self, kp: Keyplane, http: httpx2.Client, env: dict[str, str],
                 tenant: Tenant) -> None:
        self.kp, self.http, self.env, self.tenant = kp, http, env, tenant
        self.verifier = kp.keys.create(SYSTEM, None, {"name": "gw", "scopes": ["keys:verify"],
                                                      "require_tls": False},
                                       operator=True).secret

    def cli(self, *args: str) -> dict[str, Any]:
        done = subprocess.run([str(KEYPLANE), *args, "--json"], capture_output=True, text=True,
                              timeout=60, env=self.env, check=False)
        assert done.returncode == 0, done.stderr
        out: dict[str, Any] = json.loads(done.stdout)
        return out

    def verify(self, secret: str) -> dict[str, Any]:
        r = self.http.post("/v1/verify", json={"key": secret, "tls": True},
                           headers=auth(self.verifier))
        out: dict[str, Any] = r.json()
        return out

    def stored(self) -> list[str | None]:
        with self.kp.engine.connect() as conn:
            return [r.ciphertext for r in conn.execute(shares.select().order_by(shares.c.id))]


@pytest.fixture
def site(database: tuple[str, str | None], tmp_path: Path,
         clock: SettableClock) -> Iterator[Site]:
    url, schema = database
    with serving(url, schema, tmp_path, clock) as (kp, http):
        cli_url = url if schema is None else f"{url}?options={quote(f'-csearch_path={schema}')}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
        env.update(KEYPLANE_DATA_DIR=str(tmp_path / "data"), KEYPLANE_DATABASE_URL=cli_url,
                   KEYPLANE_PUBLIC_URL=str(http.base_url).rstrip("/"), NO_COLOR="1")
        yield Site(kp, http, env, make_tenant(kp))


def reveal_in_browser(browser: Any, link: str) -> str:
    page = browser.new_page()
    try:
        page.goto(link)
        page.get_by_role("button", name="Reveal").click()
        field = page.locator("#secret")
        field.wait_for(state="visible", timeout=10_000)
        assert "#" not in page.url  # the key leaves the address bar once used
        value: str = field.input_value()
        return value
    finally:
        page.close()


def page_text(browser: Any, link: str) -> tuple[str, int]:
    page = browser.new_page()
    try:
        response = page.goto(link)
        return page.locator("main").inner_text(), response.status
    finally:
        page.close()


def test_cli_share_links_decrypt_in_the_browser_once(site: Site, chromium: Any) -> None:
    tid = site.tenant.id
    made = site.cli("keys", "create", "--tenant", tid, "--name", "zapier", "--share")
    assert "key" not in made  # the secret is not printed, only the link
    link = made["share"]["url"]
    assert link.startswith(str(site.http.base_url).rstrip("/") + "/s/shr_")
    fragment = urlsplit(link).fragment
    [ciphertext] = site.stored()
    assert ciphertext is not None and fragment not in ciphertext

    secret = reveal_in_browser(chromium, link)
    assert tokens.parse(secret) is not None
    assert secret not in ciphertext and secret.partition("_")[2] not in ciphertext
    answer = site.verify(secret)
    assert answer["code"] == "VALID" and answer["key_id"] == made["id"]
    assert site.stored() == [None]  # handed out, then deleted

    text, status = page_text(chromium, link)  # a second opening
    assert status == 410 and "already been opened" in text and "Reveal" not in text

    rotated = site.cli("keys", "rotate", made["id"], "--tenant", tid, "--share",
                       "--share-expires-in", "3600")
    assert "key" not in rotated and rotated["share"]["url"] != link
    new_secret = reveal_in_browser(chromium, rotated["share"]["url"])
    assert new_secret != secret and site.verify(new_secret)["code"] == "VALID"
    assert site.verify(secret)["code"] == "VALID"  # the old secret's grace period runs


def test_expired_withdrawn_and_incomplete_links_fail_in_the_browser(
        site: Site, chromium: Any, clock: SettableClock) -> None:
    mk = site.tenant.management_key
    base = str(site.http.base_url).rstrip("/")

    def python_made(secret: str, **body: Any) -> tuple[str, str]:
        box = sealed.seal(secret)  # the same format as the CLI
        r = site.http.post("/v1/shares", json={"ciphertext": box.ciphertext, **body},
                           headers=auth(mk))
        assert r.status_code == 201, r.text
        return r.json()["id"], f"{base}/s/{r.json()['id']}#{box.key}"

    share_id, link = python_made("to be withdrawn")
    assert site.http.delete(f"/v1/shares/{share_id}", headers=auth(mk)).status_code == 204
    text, status = page_text(chromium, link)
    assert status == 410 and "withdrawn" in text and "Reveal" not in text

    # no fragment: the page says so and consumes nothing
    share_id, link = python_made("kept safe")
    page = chromium.new_page()
    try:
        page.goto(link.partition("#")[0])
        page.get_by_role("button", name="Reveal").click()
        problem = page.get_by_role("alert")
        problem.wait_for(state="visible", timeout=10_000)
        assert "incomplete" in problem.inner_text()
    finally:
        page.close()
    assert reveal_in_browser(chromium, link) == "kept safe"

    _, link = python_made("too late", expires_in_seconds=3600)
    clock.advance(seconds=3601)
    text, status = page_text(chromium, link)
    assert status == 410 and "expired" in text and "Reveal" not in text
