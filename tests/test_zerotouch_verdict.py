"""`provisioner zero-touch` explains every device of the bundled inventory.yaml, and its verdict follows the
device's state (enrolment window, decommissioned) and the vendor's facts (vendors/*.yaml zero_touch)."""

from __future__ import annotations

import json

from conftest import Home


def test_zero_touch_explains_every_device_of_the_bundled_inventory(home: Home):
    r = home.cli("zero-touch", check=True)
    assert "0 of 3 device(s) will provision by themselves" in r.stdout
    rows = json.loads(home.cli("zero-touch", "--json", check=True).stdout)["devices"]
    assert {d["mac"] for d in rows} == {"805ec0123456", "805ec0123457", "805ec0123458"}
    for d in rows:
        assert d["because"].startswith("no: https://127.0.0.1:8443/p/ names this machine's loopback"), d
        assert d["dhcp"]["supported"] and d["sip_pnp"]["supported"]
        assert d["redirect"]["service"] == "yealink-rps" and d["redirect"]["supported"]
        assert any("dhcp export --site lab" in t for t in d["todo"])


def test_verdict_follows_window_and_state(home: Home, tmp_path):
    inv = home.inventory.read_text().replace("  provisioning_url: https://127.0.0.1:8443/p/",
                                             "  provisioning_url: https://192.168.50.2:8443/p/", 1)
    home.inventory.write_text(inv)
    home.cli("dhcp", "export", "--site", "lab", "--format", "kea", "--out", str(tmp_path / "kea.json"), check=True)
    rows = {d["mac"]: d for d in json.loads(home.cli("zero-touch", "--json", "--offline", "--site", "lab",
                                                     check=True).stdout)["devices"]}
    assert rows["805ec0123456"]["will_provision"]
    assert rows["805ec0123456"]["because"] == "yes: by DHCP option 66, and its enrolment window is open"
    home.cli("decommission", "805ec0123457", check=True)
    rows = {d["mac"]: d for d in json.loads(home.cli("zero-touch", "--json", "--offline", check=True).stdout)["devices"]}
    assert not rows["805ec0123457"]["will_provision"]
    assert "decommissioned" in rows["805ec0123457"]["because"]
    r = home.cli("zero-touch", "--site", "nowhere")
    assert r.returncode == 2 and "unknown site 'nowhere'" in r.stderr


def test_a_fritzbox_cannot_hand_out_option_66():
    """docs/zero-touch.md says a FRITZ!Box's DHCP server cannot serve option 66. Evidence: the boxes' own TR-064
    description of their DHCP server (LANHostConfigManagement, FRITZ!OS 7.57 and 8.02 in tests/data/fritzbox)
    offers enable, address range, routers, subnet mask, DNS servers and domain name: no other option."""
    import re
    from pathlib import Path
    for box in ("FRITZBox_7590_154.07.57", "FRITZBox_7530_164.08.02"):
        scpd = (Path(__file__).parent / "data" / "fritzbox" / box / "lanhostconfigmgmSCPD.xml").read_text()
        actions = set(re.findall(r"<action>\s*<name>([A-Za-z]+)</name>", scpd))
        assert {"SetDHCPServerEnable", "SetAddressRange", "SetIPRouter", "SetSubnetMask"} <= actions, actions
        assert not [a for a in actions if re.search(r"option|tftp|boot|vendor", a, re.I)], actions


def test_a_closed_enrolment_window_is_a_no_with_what_to_do(home: Home, tmp_path):
    import time
    inv = home.inventory.read_text().replace("  provisioning_url: https://127.0.0.1:8443/p/",
                                             "  provisioning_url: https://192.168.50.2:8443/p/", 1)
    home.inventory.write_text(inv.replace("enrolment_hours: 24 ", "enrolment_hours: 0.001 ", 1))  # 3.6 s
    home.cli("dhcp", "export", "--site", "lab", "--format", "dnsmasq", "--out", str(tmp_path / "d.conf"), check=True)
    first = json.loads(home.cli("zero-touch", "--json", "--offline", check=True).stdout)["devices"][0]
    assert first["will_provision"], first  # adopted now: its window is open for 3.6 s
    time.sleep(4.5)
    rows = {d["mac"]: d for d in json.loads(home.cli("zero-touch", "--json", "--offline", check=True).stdout)["devices"]}
    v = rows["805ec0123456"]
    assert not v["will_provision"] and "enrolment window closed" in v["because"]
    assert "provisioner reset 805ec0123456" in v["because"]
