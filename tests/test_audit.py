"""The audit on a fleet with one device in each finding class (and clean ones), then fixed through the CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import Home, Server, free_port, kv, need, start_server, ua_for

FLEET = """\
defaults:
  registrar: {host: sip.example.net}
  policy: {blocked_prefixes: ["00", "0899"]}
sites:
  hq:
    networks: [127.0.0.0/8]
devices:
  - {mac: "80:5e:c0:00:00:01", vendor: yealink, model: T46S, site: hq, lines: [{extension: "201", display_name: Clean One}]}
  - {mac: "80:5e:c0:00:00:02", vendor: yealink, model: T46S, site: hq, lines: [{extension: "202", display_name: Clean Two}]}
  - {mac: "80:5e:c0:00:00:03", vendor: yealink, model: T46S, site: hq, lines: [{extension: "203", display_name: Drift}]}
  - {mac: "80:5e:c0:00:00:04", vendor: yealink, model: T46S, site: hq, lines: [{extension: "204", display_name: Never}]}
  - {mac: "80:5e:c0:00:00:05", vendor: yealink, model: T46S, site: hq, lines: [{extension: "205", display_name: Stale}]}
  - {mac: "80:5e:c0:00:00:06", vendor: yealink, model: T46G, site: hq, lines: [{extension: "206", display_name: Old Firmware}]}
  - {mac: "80:5e:c0:00:00:07", vendor: yealink, model: T46S, site: hq, lines: [{extension: "207", display_name: Local Change}]}
  - {mac: "80:5e:c0:00:00:08", vendor: yealink, model: T46S, site: hq, registrar: {transport: udp}, lines: [{extension: "208", display_name: Clear SIP}]}
  - {mac: "80:5e:c0:00:00:09", vendor: yealink, model: T46S, site: hq, lines: [{extension: "209", display_name: Gone}]}
  - {mac: "80:5e:c0:00:00:0a", vendor: yealink, model: T46S, site: hq, lines: [{extension: "210", display_name: Locked}]}
"""


def mac(n: int) -> str:
    return f"805ec00000{n:02x}"


def enrol(srv: Server, n: int, model: str = "T46S", firmware: str = "66.86.0.15") -> str:
    """Device n fetches from its own address 127.0.0.n (where the audit's probe will look for its web UI)."""
    status, cfg = srv.curl(f"{mac(n)}.cfg", ua_for(mac(n), model, firmware), extra=("--interface", f"127.0.0.{n}"))
    assert status == 200
    return kv(cfg)["static.auto_provision.server.password"][0]


def audit(home: Home, *args: str) -> tuple[int, dict]:
    r = home.cli("audit", "--json", "-", *args)
    assert r.returncode in (0, 3), r.stderr
    return r.returncode, json.loads(r.stdout)


def classes(report: dict) -> set[tuple[str, str | None]]:
    return {(f["type"], f["device"]) for f in report["findings"] if f["severity"] != "info"}


class FactoryWebUI(BaseHTTPRequestHandler):
    """A phone's web UI that still takes admin/admin (basic auth)."""

    accepted = "Basic YWRtaW46YWRtaW4="  # admin:admin


    def do_GET(self):
        if self.headers.get("Authorization") == self.accepted:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>status</html>")
        else:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="phone"')
            self.end_headers()

    def log_message(self, *a):
        pass


class ChangedWebUI(FactoryWebUI):
    """A phone whose admin password was changed (by us): admin/admin is refused."""

    accepted = "Basic YWRtaW46Tm90LXRoZS1mYWN0b3J5LW9uZQ=="


@pytest.fixture
def web_ui():
    """Device 6's address still takes the factory login; device 7's does not."""
    port = free_port()
    servers = [ThreadingHTTPServer(("127.0.0.6", port), FactoryWebUI),
               ThreadingHTTPServer(("127.0.0.7", port), ChangedWebUI)]
    for httpd in servers:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield port
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_one_finding_per_class_then_fixed(home: Home, web_ui: int):
    need("curl")
    home.inventory.write_text(FLEET)
    srv = start_server(home)
    try:
        pws = {n: enrol(srv, n) for n in (1, 2, 3, 5, 7, 8, 9, 10)}
        enrol(srv, 6, "T46G", "28.71.0.81")  # below the profile's minimum firmware
        # 7 uploads a local change of its display name
        local = f"#!version:1.0.0.1\naccount.1.display_name = Hacked\n".encode()
        r = subprocess.run(["curl", "-sS", "--interface", "127.0.0.7", "--cacert", str(srv.ca),
                            "-A", ua_for(mac(7), "T46S"), "--digest", "-u",
                            f"{mac(7)}:{pws[7]}", "-T", "-", "-o", "/dev/null", "-w", "%{http_code}",
                            srv.base + f"{mac(7)}-local.cfg"], input=local, capture_output=True, timeout=20)
        assert r.stdout == b"201"
    finally:
        srv.stop()
    db = sqlite3.connect(home.path / "state.db")
    db.execute("update devices set enrol_expires_at='2000-01-01 00:00:00' where mac=?", (mac(4),))
    db.execute("update devices set last_seen='2000-01-01 00:00:00' where mac=?", (mac(5),))
    db.execute("update devices set state='locked', lock_reason='test' where mac=?", (mac(10),))
    db.commit()
    # 3's line is renamed in the inventory: its desired config changes, the phone has not fetched it
    # 9 is removed from the inventory without being decommissioned
    text = FLEET.replace("display_name: Drift", "display_name: Drift Renamed")
    text = "\n".join(line for line in text.splitlines() if mac(9)[-2:] + '"' not in line.replace(":", "")) + "\n"
    home.inventory.write_text(text)

    rc, report = audit(home, "--probe-defaults", "--probe-port", str(web_ui))
    assert rc == 3
    assert classes(report) == {
        ("drift", mac(3)), ("never-enrolled", mac(4)), ("stale", mac(5)), ("firmware", mac(6)),
        ("local-override", mac(7)), ("policy", mac(8)), ("orphan", mac(9)), ("locked", mac(10)),
        ("factory-default", mac(6)),  # and not 7, whose web UI refuses admin/admin
    }
    override = next(f for f in report["findings"] if f["type"] == "local-override")
    assert "account.1.display_name" in override["evidence"] and "Hacked" not in override["evidence"]
    assert report["schema"] == "provisioner.audit/1" and report["compliant"] is False
    db = sqlite3.connect(home.path / "state.db")
    probes = db.execute("select target, details from audit_log where action='probe.defaults'").fetchall()
    assert {t for t, _ in probes} == {mac(6), mac(7)}  # logged, and only where a web UI asked for a login

    # HTML and textfile outputs
    out = home.path.parent
    r = home.cli("audit", "--html", str(out / "report.html"), "--textfile", str(out / "audit.prom"))
    assert r.returncode == 3
    page = (out / "report.html").read_text()
    assert "<svg" in page and "drift" in page and "<script" not in page
    prom = (out / "audit.prom").read_text()
    assert 'provisioner_audit_findings{site="hq",type="drift",severity="high"} 1' in prom


def test_audit_exit_0_when_compliant(home: Home):
    home.inventory.write_text(FLEET.split("  - {mac: \"80:5e:c0:00:00:03\"")[0])
    srv = start_server(home)
    try:
        enrol(srv, 1)
        enrol(srv, 2)
    finally:
        srv.stop()
    rc, report = audit(home)
    assert rc == 0 and report["compliant"] is True and report["summary"]["findings"] == 0


def test_tampered_audit_log_is_reported(home: Home):
    home.cli("check", check=True)
    home.cli("devices", check=True)  # writes device.added entries
    db = sqlite3.connect(home.path / "state.db")
    db.execute("update audit_log set why='nothing to see' where id = 1")
    db.commit()
    rc, report = audit(home)
    assert rc == 3
    tamper = [f for f in report["findings"] if f["type"] == "tamper"]
    assert tamper and tamper[0]["severity"] == "critical" and "entry 1" in tamper[0]["evidence"]


def test_bad_inventory_exits_2(home: Home):
    home.inventory.write_text("sites: {}\n")
    assert home.cli("audit").returncode == 2


CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]


def test_html_report_renders_in_chromium(home: Home, tmp_path: Path):
    need("chromium")
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright
    text = FLEET.replace("display_name: Drift", "display_name: Drift Renamed")
    home.inventory.write_text(text)
    home.cli("devices", check=True)
    r = home.cli("audit", "--html", str(tmp_path / "report.html"))
    assert r.returncode == 3
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto((tmp_path / "report.html").as_uri())
            assert page.locator("h1").inner_text() == "Provisioning audit"
            assert page.locator("svg rect").count() >= 2  # bars and legend of the chart
            assert page.locator("tbody tr").count() >= 10
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
