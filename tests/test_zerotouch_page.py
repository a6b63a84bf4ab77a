"""The helpdesk page shows the zero-touch verdict of one device (headless Chromium, Debian's, via Playwright):
no path in place at first, then "yes, by DHCP option 66" once the site's DHCP export is on record."""

from __future__ import annotations

import json

from conftest import Home, need, start_server
from test_helpdesk_page import FLAGS

LAN_URL = "https://192.168.50.2:8443/p/"


def test_page_shows_the_zero_touch_verdict(home: Home, tmp_path):
    need("chromium")
    from playwright.sync_api import expect, sync_playwright

    # phones on the lab LAN are told the server's LAN address (serve itself listens on loopback here)
    home.inventory.write_text(home.inventory.read_text().replace(
        "  provisioning_url: https://127.0.0.1:8443/p/", f"  provisioning_url: {LAN_URL}", 1))
    srv = start_server(home, api=True)
    try:
        token = json.loads(home.cli("api", "tokens", "create", "--role", "viewer", "--name", "vera", "--json",
                                    check=True).stdout)["token"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True,
                                        timeout=30_000)
            try:
                page = browser.new_context(ignore_https_errors=True).new_page()
                page.set_default_timeout(15_000)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(srv.api_base + "/")
                page.fill("#token", token)
                page.click("#save-token")
                expect(page.locator("#who")).to_have_text("signed in as vera (viewer)")
                page.fill("#q", "101")
                page.click("#search")
                expect(page.locator("#zt-verdict")).to_have_attribute("data-verdict", "no")
                expect(page.locator("#zt-verdict")).to_contain_text("no path is in place")
                expect(page.locator("#zt-paths")).to_contain_text("not registered at Yealink RPS")
                expect(page.locator("#zt-paths")).to_contain_text("provisioner dhcp export --site lab")

                home.cli("dhcp", "export", "--site", "lab", "--format", "dnsmasq", "--out",
                         str(tmp_path / "lab.conf"), check=True)
                page.click("#search")
                expect(page.locator("#zt-verdict")).to_have_attribute("data-verdict", "yes")
                expect(page.locator("#zt-verdict")).to_contain_text("yes: by DHCP option 66")
                expect(page.locator("#zt-paths")).to_contain_text(f"option 66 = {LAN_URL}")
                page.screenshot(path=str(tmp_path / "zero-touch.png"), full_page=True)
                assert not errors, errors
            finally:
                browser.close()
    finally:
        srv.stop()
