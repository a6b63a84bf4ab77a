"""adopt with what discovery identified: vendor/model left out, --all-discovered (asks first, --yes for
scripts), the passive source (devices that asked the server for a config). No multicast here: the
observations are seeded through the discovery code itself, or come from real fetches on loopback."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import PROVISIONER, REPO, Home, start_server, ua_for


def seed(home: Home, observations: list) -> None:
    """Record observations the way `discover` does (identify, then save), in the test's --home."""
    from provisioner.discovery import save
    from provisioner.runtime import Runtime
    rt = Runtime(home=home.path, inventory_path=home.inventory)
    for o in observations:
        o.identify(rt.catalog)
    save(rt.store, observations, "test-run")
    rt.store.close()


def pnp(mac: str, ip: str, vendor: str, model: str, version: str, ua: str | None = None):
    from provisioner.discovery import Observation
    from provisioner.fingerprint import Evidence
    return Observation("sip-pnp", ip=ip, mac=mac,
                       evidence=Evidence(mac=mac, user_agent=ua, pnp_vendor=vendor, pnp_model=model,
                                         pnp_version=version),
                       factory_default="asks for a provisioning server by SIP PnP")


def snmp(mac: str, ip: str, descr: str, oid: str = "1.3.6.1.4.1.8072.3.2.10"):
    from provisioner.discovery import Observation
    from provisioner.fingerprint import Evidence
    return Observation("snmp", ip=ip, mac=mac, evidence=Evidence(mac=mac, sys_descr=descr, sys_object_id=oid))


def ssdp(mac: str, ip: str):
    from provisioner.discovery import Observation
    from provisioner.fingerprint import Evidence
    return Observation("ssdp", ip=ip, mac=mac, evidence=Evidence(mac=mac, manufacturer="AVM",
                                                                  model_name="FRITZ!Box 7530", firmware="164.08.02"))


def mdns(mac: str, ip: str, name: str):
    from provisioner.discovery import Observation
    from provisioner.fingerprint import Evidence
    return Observation("mdns", ip=ip, mac=mac, evidence=Evidence(mac=mac, texts=[name]))


def lab_findings():
    """The bundled inventory's site `lab` holds 192.168.50.0/24."""
    return [
        pnp("805ec0aa0001", "192.168.50.41", "yealink", "T46S", "66.86.0.15", "Yealink SIP-T46S 66.86.0.15"),
        snmp("805ec0aa0002", "192.168.50.42", "Yealink SIP-T41P 36.83.0.35"),
        pnp("02aa00aa0003", "192.168.50.43", "acme", "X1", "1.0"),  # a vendor with no profile
        ssdp("3ca62faa0004", "192.168.50.1"),  # a router
        pnp("805ec0aa0005", "10.1.2.3", "yealink", "T46S", "66.86.0.15"),  # not on the site's networks
        mdns("805ec0aa0006", "192.168.50.46", "Yealink phone"),  # vendor by OUI, model unknown
    ]


def test_adopt_without_vendor_and_model_uses_discovery(home: Home):
    seed(home, lab_findings())
    before = home.inventory.read_text()
    r = home.cli("adopt", "80:5e:c0:aa:00:01", "--site", "lab", "--line", "201:Shop Front")
    assert r.returncode == 0, r.stderr
    assert "identified as Yealink T46S by sip-pnp" in r.stdout
    assert "adopted 805ec0aa0001 (Yealink T46S) in site lab" in r.stdout and "Next, on site" in r.stdout
    after = home.inventory.read_text()
    assert after.startswith(before.rstrip("\n"))  # comments and order above are untouched
    assert "mac: 80:5e:c0:aa:00:01" in after and "model: T46S" in after and "display_name: Shop Front" in after
    assert home.cli("check").returncode == 0
    dev = next(d for d in json.loads(home.cli("devices", "--json").stdout) if d["mac"] == "805ec0aa0001")
    assert dev["state"] == "enrolling" and dev["vendor"] == "yealink"

    # twice: refused, nothing written
    r = home.cli("adopt", "805ec0aa0001", "--site", "lab", "--line", "202")
    assert r.returncode == 2 and "already adopted" in r.stderr
    assert home.inventory.read_text() == after

    # SNMP identified the second one (sysDescr); --vendor alone is completed with the discovered model
    r = home.cli("adopt", "805ec0aa0002", "--vendor", "yealink", "--site", "lab", "--line", "203")
    assert r.returncode == 0, r.stderr
    assert "identified as Yealink T41P by snmp" in r.stdout


@pytest.mark.parametrize("mac, message", [
    ("02aa00aa0003", "acme has no phone profile"),
    ("3ca62faa0004", "no phone profile"),
    ("805ec0aa0006", "model not identified"),
    ("805ec0aa0099", "not seen by discovery"),
])
def test_adopt_refuses_what_discovery_could_not_identify(home: Home, mac: str, message: str):
    seed(home, lab_findings())
    before = home.inventory.read_text()
    r = home.cli("adopt", mac, "--site", "lab", "--line", "210")
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "--vendor and --model" in r.stderr
    assert home.inventory.read_text() == before


def test_adopt_arguments_are_checked(home: Home):
    for args, message in [
        (["--site", "lab", "--line", "220"], "give the MAC"),
        (["805ec0aa0001", "--site", "lab"], "--line is required"),
        (["805ec0aa0001", "--all-discovered", "--site", "lab"], "--all-discovered takes no MAC"),
        (["805ec0aa0001", "--site", "lab", "--line", "220", "--yes"], "go with --all-discovered"),
        (["--all-discovered", "--site", "mars", "--yes"], "unknown site"),
    ]:
        r = home.cli("adopt", *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)


def test_adopt_all_discovered(home: Home):
    seed(home, lab_findings())
    before = home.inventory.read_text()
    r = home.cli("adopt", "--all-discovered", "--site", "lab", "--yes", "--first-extension", "300")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "to adopt in site lab: 2" in out
    assert "adopted 805ec0aa0001 (Yealink T46S)" in out and "adopted 805ec0aa0002 (Yealink T41P)" in out
    for mac, why in [("02aa00aa0003", "no phone profile"), ("3ca62faa0004", "no phone profile"),
                     ("805ec0aa0005", "outside site lab"), ("805ec0aa0006", "model not identified")]:
        line = next((ln for ln in out.splitlines() if mac in ln), "")
        assert why in line, (mac, out)
    after = home.inventory.read_text()
    assert after.startswith(before.rstrip("\n"))
    assert 'extension: "300"' in after and 'extension: "301"' in after
    assert home.cli("check").returncode == 0
    # again: everything identified is adopted now
    r = home.cli("adopt", "--all-discovered", "--site", "lab", "--yes")
    assert r.returncode == 0 and "nothing to adopt" in r.stdout
    assert home.inventory.read_text() == after


def _adopt_interactive(home: Home, answer: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PROVISIONER, "--home", str(home.path), "--inventory", str(home.inventory), "adopt",
                           "--all-discovered", "--site", "lab"], input=answer, capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_adopt_all_discovered_asks_first(home: Home):
    seed(home, lab_findings())
    before = home.inventory.read_text()
    r = _adopt_interactive(home, "n\n")
    assert r.returncode == 1 and "Adopt these 2 device(s)" in r.stderr and "Aborted" in r.stderr
    assert home.inventory.read_text() == before
    r = _adopt_interactive(home, "")  # no answer at all (end of input): nothing either
    assert r.returncode == 1 and home.inventory.read_text() == before
    r = _adopt_interactive(home, "y\n")
    assert r.returncode == 0, r.stderr
    assert "adopted 805ec0aa0001" in r.stdout and "adopted 805ec0aa0002" in r.stdout
    assert home.cli("check").returncode == 0


def test_passive_finds_devices_that_asked_for_a_config(home: Home):
    """A phone not in the inventory asks the real server for its file: the fetch is recorded, `discover
    --passive` reports it (no network probe at all), and `adopt` takes its vendor/model from there."""
    mac = "805ec0bb0042"
    srv = start_server(home)
    try:
        status, _ = srv.curl(f"{mac}.cfg", ua_for(mac, "T46S"))
        assert status == 401  # unknown device: the same challenge as everyone
    finally:
        srv.stop()  # the event recorder flushes on the way out
    r = home.cli("discover", "--passive", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    row = next(d for d in rows if d["mac"] == mac)
    assert row["vendor"] == "yealink" and row["model"] == "T46S" and row["firmware"] == "66.86.0.15"
    assert row["found_by"] == ["passive"] and row["adopted"] is False and row["ip"] == "127.0.0.1"
    assert any(f"asked this server for {mac}.cfg" in w for w in row["why"])
    assert all(d["mac"] not in ("805ec0123456", "805ec0123457") for d in rows)  # adopted ones are not news
    r = home.cli("adopt", mac, "--site", "lab", "--line", "230")
    assert r.returncode == 0, r.stderr
    assert "identified as Yealink T46S by passive" in r.stdout
    assert home.cli("check").returncode == 0
