"""The helpdesk web page in headless Chromium (Debian's chromium, driven by Playwright; no browser download).

The page finds a device, shows its state and last fetch, and a Reprovision click runs a job that completes
when a curl "phone" fetches its new config. A screenshot lands in the test's tmp dir (not compared).
"""

from __future__ import annotations

import json
import ssl
import time

import httpx

from conftest import Home, kv, need, start_server, ua_for

# test-peers.md §12: no background traffic, no lookups of outside hosts (loopback excluded)
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]
MAC, MODEL = "805ec0123456", "T46G"


def test_page_finds_a_device_and_a_reprovision_click_completes_a_job(home: Home, tmp_path):
    need("chromium", "curl")
    from playwright.sync_api import expect, sync_playwright

    srv = start_server(home, api=True)
    try:
        tokens = {role: json.loads(home.cli("api", "tokens", "create", "--role", role, "--name", name, "--json",
                                            check=True).stdout)["token"]
                  for role, name in (("helpdesk", "hana"), ("viewer", "vera"))}
        status, old_cfg = srv.curl(f"{MAC}.cfg", ua_for(MAC, MODEL))  # the phone enrols
        assert status == 200
        old_pw = kv(old_cfg)["static.auto_provision.server.password"][0]
        with httpx.Client(base_url=srv.api_base, verify=ssl.create_default_context(cafile=str(srv.ca)),
                          headers={"Authorization": f"Bearer {tokens['viewer']}"}, timeout=10) as api:
            deadline = time.monotonic() + 10  # fetch events are written in batches
            while api.get(f"/api/v1/devices/{MAC}").json()["last_fetch"] is None:
                assert time.monotonic() < deadline
                time.sleep(0.1)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS, headless=True,
                                        timeout=30_000)
            try:
                ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1200, "height": 900})
                page = ctx.new_page()
                page.set_default_timeout(15_000)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(srv.api_base + "/")

                # a viewer sees the device but cannot press anything
                page.fill("#token", tokens["viewer"])
                page.click("#save-token")
                expect(page.locator("#who")).to_have_text("signed in as vera (viewer)")
                page.fill("#q", "101")
                page.click("#search")
                expect(page.locator("#d-title")).to_have_text(f"reception · {MAC}")
                expect(page.locator("#btn-reprovision")).to_be_disabled()
                page.click("#forget-token")
                expect(page.locator("#who")).to_have_text("not signed in")

                # the helpdesk finds it by extension, sees state and last fetch, and reprovisions it
                page.fill("#token", tokens["helpdesk"])
                page.click("#save-token")
                expect(page.locator("#who")).to_have_text("signed in as hana (helpdesk)")
                assert page.evaluate("sessionStorage.length") == 1
                page.fill("#q", "101")
                page.click("#search")
                expect(page.locator("#results tbody tr")).to_have_count(1)
                expect(page.locator("#d-state")).to_have_text("provisioned")
                expect(page.locator("#d-sync")).to_contain_text("yes")
                expect(page.locator("#last-fetch")).to_contain_text(f"{MAC}.cfg")
                expect(page.locator("#last-fetch")).to_contain_text("200")
                expect(page.locator("#findings")).to_contain_text("none")
                expect(page.locator("#btn-unlock")).to_be_disabled()  # only for a locked device
                page.click("#btn-reprovision")
                expect(page.locator("#job")).to_have_attribute("data-status", "running")
                expect(page.locator("#job")).to_contain_text("waiting for the phone")

                # the "phone" resyncs with the credentials it holds and gets the new config
                deadline, fetched = time.monotonic() + 20, False
                while not fetched and time.monotonic() < deadline:
                    status, body = srv.curl(f"{MAC}.cfg", ua_for(MAC, MODEL), user=MAC, password=old_pw)
                    fetched = status == 200 and body != old_cfg
                    if not fetched:
                        time.sleep(0.3)
                assert fetched

                expect(page.locator("#job")).to_have_attribute("data-status", "done", timeout=20_000)
                expect(page.locator("#job")).to_contain_text("the phone fetched its new config (generation 2)")
                expect(page.locator("#d-creds")).to_contain_text("generation 2")
                expect(page.locator("#d-state")).to_have_text("provisioned")
                expect(page.locator("#audit")).to_contain_text("rotation.confirmed")
                expect(page.locator("#audit")).to_contain_text("api:hana")
                page.screenshot(path=str(tmp_path / "helpdesk.png"), full_page=True)
                assert not errors, errors
                body_text = page.content()
                assert tokens["helpdesk"] not in body_text  # the token field is cleared once accepted
            finally:
                browser.close()
        assert srv.curl(f"{MAC}.cfg", ua_for(MAC, MODEL), user=MAC, password=old_pw)[0] == 401  # retired
    finally:
        srv.stop()
    assert (tmp_path / "helpdesk.png").stat().st_size > 10_000
