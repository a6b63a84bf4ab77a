"""Zero-touch over DHCP: `provisioner dhcp export` for the real Debian servers (dnsmasq, Kea; ISC dhcpd parses
its export), run in a namespace site, and a real DHCP client (dhclient from isc-dhcp-client) sending each
vendor's option 60: the offer carries the right provisioning server for that vendor. Then a factory-fresh
phone: DHCP, then curl with its User-Agent to the URL it was given, enrols with no URL typed by anyone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PROVISIONER, REPO, Home, need
from netns import Site, require_namespaces

NET = "10.99.43"
SRV = f"{NET}.1"
URL = f"https://{SRV}:8443/p/"

INVENTORY = f"""\
# zero-touch DHCP test site
defaults:
  registrar: {{host: sip.example.net}}
sites:
  shop:
    networks: [{NET}.0/24]
    provisioning_url: {URL}
    tftp_url: tftp://{SRV}/
devices:
  - mac: 80:5e:c0:43:00:01
    vendor: yealink
    model: T46S
    site: shop
    lines: [{{extension: "201", display_name: Counter}}]
  - mac: c8:9c:1d:43:00:02
    vendor: cisco
    model: SPA504G
    site: shop
    lines: [{{extension: "202", display_name: Office}}]
  - mac: 00:04:f2:43:00:03
    vendor: polycom
    model: VVX400
    site: shop
    lines: [{{extension: "203", display_name: Meeting}}]
"""

# (what the phone sends as option 60, what it must get in option 66): vendor classes from vendors/*.yaml
CASES = [
    (None, URL),                              # Yealink, Snom, Fanvil …: no class needed, the URL
    ("Cisco SPA504G-7.5.5", SRV),             # Cisco SPA: a TFTP host for /spa$PSN.cfg
    ("LINKSYS SPA-942", SRV),
    ("N510_IP_PRO", URL),                     # Gigaset N510: a class, the URL
]


def _home(tmp_path: Path, capture_dir: Path, name: str) -> Home:
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY)
    cap = capture_dir / name
    cap.mkdir(exist_ok=True)
    return Home(tmp_path / "home", inv, cap)


def _export(home: Home, fmt: str, out: Path) -> str:
    home.cli("dhcp", "export", "--site", "shop", "--format", fmt, "--out", str(out), check=True)
    text = out.read_text()
    assert "password" not in text.lower() and URL in text
    return text


def _lease(site: Site, phone, tmp: Path, vendor_class: str | None, label: str, timeout: float = 20) -> dict:
    """dhclient in the phone's namespace, sending `vendor_class` as option 60; the options of its lease."""
    out = tmp / f"{label}.env"
    script = tmp / f"{label}.sh"
    script.write_text("#!/bin/sh\ncase \"$reason\" in BOUND|RENEW|REBIND|REBOOT)\n"
                      "  ip addr add \"$new_ip_address/$new_subnet_mask\" dev \"$interface\" 2>/dev/null\n"
                      f"  env | grep '^new_' > {out}.tmp && mv {out}.tmp {out};;\nesac\nexit 0\n")
    script.chmod(0o755)
    conf = tmp / f"{label}.conf"
    conf.write_text("option provisioner-160 code 160 = text;\ntimeout 15;\nretry 1;\n"
                    + (f'send vendor-class-identifier "{vendor_class}";\n' if vendor_class else "")
                    + "request subnet-mask, routers, tftp-server-name, provisioner-160;\n")
    site.run(phone, ["ip", "addr", "flush", "dev", "eth0"])
    proc = site.popen(phone, ["dhclient", "-1", "-d", "-cf", str(conf), "-sf", str(script), "-lf",
                              str(tmp / f"{label}.leases"), "-pf", str(tmp / f"{label}.pid"), "eth0"], label)
    deadline = time.monotonic() + timeout
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    site.stop(proc)
    assert out.exists(), f"no lease for {vendor_class!r}:\n{site.log(label)}"
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    return {k[4:]: v for k, v in env.items()}


def _dnsmasq(site: Site, srv, tmp: Path, snippet: Path):
    conf = tmp / "dnsmasq.conf"
    conf.write_text(f"conf-file={snippet}\nport=0\ninterface=eth0\nbind-interfaces\nuser=root\n"
                    f"dhcp-range={NET}.100,{NET}.150,255.255.255.0,1h\ndhcp-leasefile={tmp / 'dnsmasq.leases'}\n"
                    "log-dhcp\n")
    proc = site.popen(srv, ["dnsmasq", "-k", "-C", str(conf), f"--pid-file={tmp / 'dnsmasq.pid'}",
                            "--log-facility=-"], "dnsmasq")
    assert site.wait_udp(srv, 67), site.log("dnsmasq")
    return proc


def _kea(site: Site, srv, tmp: Path, exported: Path):
    cfg = json.loads(exported.read_text())
    d4 = cfg["Dhcp4"]
    d4["interfaces-config"] = {"interfaces": ["eth0"]}
    d4["lease-database"] = {"type": "memfile", "persist": False}
    d4["subnet4"][0]["pools"] = [{"pool": f"{NET}.100 - {NET}.150"}]
    d4["loggers"] = [{"name": "kea-dhcp4", "output_options": [{"output": "stdout"}], "severity": "INFO"}]
    conf = tmp / "kea.json"
    conf.write_text(json.dumps(cfg))
    env = ["env", f"KEA_PIDFILE_DIR={tmp}", f"KEA_LOCKFILE_DIR={tmp}"]
    proc = site.popen(srv, [*env, "kea-dhcp4", "-c", str(conf)], "kea")
    assert site.wait_udp(srv, 67, timeout=10), site.log("kea")
    return proc


@pytest.mark.parametrize("server", ["dnsmasq", "kea"])
def test_each_vendor_gets_its_provisioning_server_in_the_offer(server, tmp_path, capture_dir):
    need("dhclient", "dnsmasq" if server == "dnsmasq" else "kea-dhcp4")
    require_namespaces()
    home = _home(tmp_path, capture_dir, f"zt-dhcp-{server}")
    exported = tmp_path / f"export.{server}"
    text = _export(home, server, exported)
    assert "Cisco SPA" in text  # the vendor class, from vendors/cisco.yaml
    with Site(NET, tmp=tmp_path / "site") as site:
        srv = site.add_host("srv", 1)
        phone = site.add_host("phone", 50, mac="80:5e:c0:43:00:01")
        (_dnsmasq if server == "dnsmasq" else _kea)(site, srv, tmp_path, exported)
        for i, (vc, want) in enumerate(CASES):
            got = _lease(site, phone, tmp_path, vc, f"lease{i}")
            assert got["ip_address"].startswith(NET + "."), got
            assert got.get("tftp_server_name") == want, (vc, got)
            assert got.get("provisioner_160") == URL, (vc, got)  # the site has a Polycom: option 160 too


def test_export_is_recorded_and_zero_touch_sees_it(tmp_path, capture_dir):
    home = _home(tmp_path, capture_dir, "zt-dhcp-record")
    r = home.cli("zero-touch", "--json", "--offline", check=True)
    before = {d["mac"]: d for d in json.loads(r.stdout)["devices"]}
    assert not before["805ec0430001"]["dhcp"]["in_place"]
    assert "dhcp export --site shop" in " ".join(before["805ec0430001"]["todo"])
    _export(home, "dnsmasq", tmp_path / "dnsmasq.conf")
    after = {d["mac"]: d for d in json.loads(home.cli("zero-touch", "--json", "--offline", check=True).stdout)["devices"]}
    for mac in after:
        assert after[mac]["dhcp"]["in_place"], after[mac]
        assert after[mac]["will_provision"], after[mac]
    assert "option 66 = " + URL in after["805ec0430001"]["dhcp"]["detail"]
    assert "TFTP host" in after["c89c1d430002"]["dhcp"]["detail"]
    # the site's URL changes: the export on record no longer hands out the right one
    home.inventory.write_text(INVENTORY.replace(URL, f"https://{NET}.2:8443/p/"))
    stale = json.loads(home.cli("zero-touch", "--json", "--offline", check=True).stdout)["devices"][0]
    assert not stale["dhcp"]["in_place"] and "not the current" in stale["dhcp"]["detail"]


def test_isc_export_parses_with_dhcpd(tmp_path, capture_dir):
    need("dhcpd")
    home = _home(tmp_path, capture_dir, "zt-dhcp-isc")
    text = _export(home, "isc", tmp_path / "isc.conf")
    conf = tmp_path / "dhcpd.conf"
    conf.write_text(text + f"subnet {NET}.0 netmask 255.255.255.0 {{ range {NET}.100 {NET}.150; }}\n")
    r = subprocess.run(["dhcpd", "-t", "-cf", str(conf)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'class "pv-cisco"' in text and "code 160" in text
    # and a broken one is refused: the check is real
    conf.write_text(text.replace("match if", "match iff"))
    assert subprocess.run(["dhcpd", "-t", "-cf", str(conf)], capture_output=True, timeout=30).returncode != 0


def test_export_refuses_unknown_site_and_changes_nothing(tmp_path, capture_dir):
    home = _home(tmp_path, capture_dir, "zt-dhcp-bad")
    r = home.cli("dhcp", "export", "--site", "nowhere", "--format", "kea", "--out", str(tmp_path / "x.json"))
    assert r.returncode == 2 and "unknown site 'nowhere'" in r.stderr
    assert not (tmp_path / "x.json").exists()


def test_factory_fresh_phone_enrols_with_no_url_typed(tmp_path, capture_dir):
    """The "done when" of issue 19: DHCP gives the phone its URL, the phone fetches with its User-Agent, and
    the answer carries its credentials (enrolment) — nobody typed a URL."""
    need("dhclient", "dnsmasq", "curl")
    require_namespaces()
    home = _home(tmp_path, capture_dir, "zt-factory-fresh")
    snippet = tmp_path / "dnsmasq.snippet"
    _export(home, "dnsmasq", snippet)
    mac = "805ec0430001"
    ua = "Yealink SIP-T46S 66.86.0.15 80:5e:c0:43:00:01"
    with Site(NET, tmp=tmp_path / "site") as site:
        srv = site.add_host("srv", 1)
        phone = site.add_host("phone", 50, mac="80:5e:c0:43:00:01")
        _dnsmasq(site, srv, tmp_path, snippet)
        serve = site.popen(srv, [*PROVISIONER, "--home", str(home.path), "--inventory", str(home.inventory),
                                 "serve", "--https", f"{SRV}:8443", "--tftp", ""], "serve", cwd=REPO)
        assert site.wait_tcp(srv, 8443, timeout=30), site.log("serve")
        got = _lease(site, phone, tmp_path, None, "fresh")
        url = got["tftp_server_name"]
        assert url == URL
        r = site.run(phone, ["curl", "-sS", "--max-time", "10", "--cacert", str(home.path / "tls" / "ca.pem"),
                             "-A", ua, "-o", str(tmp_path / "cfg"), "-w", "%{http_code}", url + f"{mac}.cfg"])
        assert r.stdout == "200", r.stdout + r.stderr + site.log("serve")
        cfg = (tmp_path / "cfg").read_text()
        assert "static.auto_provision.server.password" in cfg  # its own provisioning credentials: enrolled
        site.stop(serve)
    rows = {d["mac"]: d for d in json.loads(home.cli("devices", "--json", check=True).stdout)}
    assert rows[mac]["state"] == "provisioned" and rows[mac]["last_ip"].startswith(NET + ".")
