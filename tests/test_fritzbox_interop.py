"""FRITZ!Box interop (issue 13 point 5): what a real box takes and gives back, against the real FRITZ!OS 7.57
and 8.02 descriptions (tests/data/fritzbox) and two descriptions derived from 7.57 for an older FRITZ!OS.

- InComingNumbers is AVM's number list, the format X_AVM-DE_GetNumbers answers (AVM "TR-064 Support –
  X_VoIP", x_voip-avm.pdf, as read by blacksenator/fritzsoap src/x_voip.php and Kruemelino/FBoxAPI
  FBoxObj/SIP/SIPTelNrList.vb + SIPTelNr.vb), built from the box's own entries; read back parsed.
- The ClientId is the agent's ownership tag only once the box is seen to keep it.
- A read-back key an older FRITZ!OS does not return is "not reported", never drift.
- A push that stops midway exits 4 with what was written; required actions are checked before writing.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import Home
from test_fritzbox import LOGIN, LOGIN_ENV, MAC, TRUNK_PASSWORD, router_yaml
from tr064_box import FIXTURES, SVC_NS, VARIANTS, TR064Box
from provisioner import routers
from provisioner.drivers.base import ActionFailed, NotSupported, PushIncomplete
from provisioner.drivers.fritzbox import (OPTIONAL, REQUIRED, number_list, parse_number_list)
from provisioner.errors import InputError
from provisioner.runtime import Runtime

LINE_NUMBER = "+33102030401"  # line 101's number in inventory.yaml; router_yaml gives it to trunk 0


def _start(firmware: str) -> TR064Box:
    return TR064Box(firmware, users={"provisioner": LOGIN}, tls=(firmware == "8.02")).start()


@pytest.fixture
def make(home: Home, tmp_path: Path, monkeypatch):
    """make(firmware, yaml_edit=None) -> (runtime, box): a box and the lab inventory with it as a router."""
    boxes, runtimes = [], []

    def _make(firmware: str, edit=lambda text: text):
        box = _start(firmware)
        boxes.append(box)
        trunk = tmp_path / "trunk.pw"
        trunk.write_text(TRUNK_PASSWORD + "\n")
        trunk.chmod(0o600)
        with open(home.inventory, "a") as f:
            f.write(edit(router_yaml(box, trunk)))
        monkeypatch.setenv(LOGIN_ENV, LOGIN)
        rt = Runtime(home=home.path, inventory_path=home.inventory)
        runtimes.append(rt)
        return rt, box

    yield _make
    for rt in runtimes:
        rt.store.close()
    for b in boxes:
        b.stop()
        assert not b.violations, "calls that the descriptions do not allow:\n" + "\n".join(b.violations)


def _client(box: TR064Box, cid: str) -> dict:
    return next(c for c in box.clients if c["client_id"] == cid)


# ---- the number list ----------------------------------------------------------------------------------

def test_number_list_format():
    items = [{"Number": LINE_NUMBER, "Type": "eVoIP", "Index": "0", "Name": "Büro & Co"}]
    text = number_list(items)
    root = ET.fromstring(text)
    assert root.tag == "List" and [c.tag for c in root.find("Item")] == ["Number", "Type", "Index", "Name"]
    assert parse_number_list(text) == items
    assert number_list([]) == "" and parse_number_list("") == [] and parse_number_list(None) == []
    assert parse_number_list(LINE_NUMBER) is None, "a bare number is not AVM's list"
    assert parse_number_list('<!DOCTYPE x [<!ENTITY a "b">]><List/>') is None


@pytest.mark.parametrize("firmware", ["8.02", "7.57"])
def test_incoming_numbers_are_avms_list_and_compared_parsed(make, firmware):
    rt, box = make(firmware)
    box.other_numbers = [{"Number": "0301234567", "Type": "ePOTS", "Index": 0, "Name": "analogue line"}]
    out = routers.push(rt, MAC, "test")
    assert out.ok, out.drift
    # the box's own entry for the number (a VoIP account: eVoIP, the account's index), not a bare number
    assert parse_number_list(_client(box, "provisioner-101")["incoming"]) == [
        {"Number": LINE_NUMBER, "Type": "eVoIP", "Index": "0", "Name": ""}]
    assert _client(box, "provisioner-103")["incoming"] == "", "a line without a number: an empty list"
    assert routers.status(rt, MAC).drift_count == 0
    # someone points 101 at the analogue line on the box: the parsed list differs, and the push repairs it
    _client(box, "provisioner-101")["incoming"] = number_list(
        [{"Number": "0301234567", "Type": "ePOTS", "Index": "0", "Name": "analogue line"}])
    drift = [d for d in routers.status(rt, MAC).drift if d.counts]
    assert [(d.key, d.expected, d.actual) for d in drift] == [
        ("client[provisioner-101].incoming_numbers", LINE_NUMBER, "0301234567")]
    assert routers.push(rt, MAC, "test", force=True).ok
    assert parse_number_list(_client(box, "provisioner-101")["incoming"])[0]["Number"] == LINE_NUMBER


def test_a_number_the_box_lacks_is_refused_before_writing(make):
    rt, box = make("8.02", lambda y: y.replace(f'number: "{LINE_NUMBER}"', 'number: "4930123456"'))
    with pytest.raises(InputError) as e:
        routers.push(rt, MAC, "test")
    assert f"the box has no number {LINE_NUMBER}" in str(e.value) and "Nothing was written" in str(e.value)
    assert box.writes() == [] and box.accounts == {} and box.clients == []


# ---- ownership ----------------------------------------------------------------------------------------

def test_a_box_that_drops_the_client_id_stops_the_push(make):
    rt, box = make("8.02")
    box.keeps_client_id = False
    with pytest.raises(PushIncomplete) as e:
        routers.push(rt, MAC, "test")
    msg = str(e.value)
    assert e.value.exit_code == 4 and "did not keep the ClientId 'provisioner-101'" in msg
    assert "Written before it stopped: trunk[0], client[provisioner-101]." in msg
    assert e.value.result.changed == ["trunk[0]", "client[provisioner-101]"]
    assert len(box.clients) == 1, "no second client written without the tag"
    assert rt.store.credentials(MAC, "active") == {} and rt.store.device(MAC).state != "provisioned"
    failed = [a for a in rt.store.audit_entries(MAC) if a["action"] == "router.push-failed"]
    details = failed[0]["details"]
    details = json.loads(details) if isinstance(details, str) else details
    assert details["written"]["changed"] == ["trunk[0]", "client[provisioner-101]"]


def test_a_customers_client_with_our_user_name_is_never_taken_over(make):
    rt, box = make("7.57")
    box.clients.append({"password": "Customer-1234", "username": "ip101", "phone_name": "customer's phone",
                        "client_id": "", "outgoing": "", "incoming": "", "external": False, "internal": "**620"})
    with pytest.raises(ActionFailed) as e:
        routers.push(rt, MAC, "test")
    assert "already uses the user name 'ip101'" in str(e.value) and "Nothing was written" in str(e.value)
    assert box.writes() == [] and box.clients[0]["phone_name"] == "customer's phone"


# ---- FRITZ!OS generations -----------------------------------------------------------------------------

def test_declared_actions_exist_in_the_real_descriptions():
    """Every action the driver declares is in both real FRITZ!OS descriptions, with that service."""
    for variant in ("8.02", "7.57"):
        root = FIXTURES / VARIANTS[variant]["dir"]
        desc = (root / "tr64desc.xml").read_text()
        scpd_of = {}
        for svc in ET.fromstring(desc).iter("{urn:dslforum-org:device-1-0}service"):
            stype = svc.findtext("{urn:dslforum-org:device-1-0}serviceType").split(":")[-2]
            path = root / svc.findtext("{urn:dslforum-org:device-1-0}SCPDURL").lstrip("/")
            if path.exists():
                scpd_of[stype] = {a.findtext(f"{{{SVC_NS}}}name")
                                  for a in ET.parse(path).getroot().iter(f"{{{SVC_NS}}}action")}
        declared = [(s, a) for part in REQUIRED.values() for s, a, _ in part] + list(OPTIONAL)
        for service, action in declared:
            assert action in scpd_of.get(service.rstrip("1"), set()), f"{variant}: {service}:{action}"


def test_older_fritzos_without_the_default_password_flag_reaches_provisioned(make):
    rt, box = make("7.57-old")
    assert not box.has_action("LANConfigSecurity", "X_AVM-DE_IsDefaultPasswordActive")
    out = routers.push(rt, MAC, "test")
    assert out.ok and rt.store.device(MAC).state == "provisioned", out.drift
    flag = next(d for d in out.drift if d.key == "config_password.default_active")
    assert (flag.kind, flag.actual, flag.counts) == ("unverifiable", "(not reported)", False)
    assert "does not report" in flag.detail
    before = len(box.calls)
    again = routers.push(rt, MAC, "test")
    assert again.ok and again.result.changed == [], "a provisioned box is not rewritten on every push"
    assert [a for _, a in box.calls[before:] if not a.startswith(("Get", "X_AVM-DE_Get"))] == []


def test_fritzos_without_a_required_action_is_refused_before_writing(make):
    rt, box = make("7.57-no-setclient4")
    with pytest.raises(NotSupported) as e:
        routers.push(rt, MAC, "test")
    msg = str(e.value)
    assert "X_VoIP:X_AVM-DE_SetClient4" in msg and "X_VoIP:X_AVM-DE_GetNumbers" in msg
    assert "Nothing was written" in msg and e.value.exit_code == 2
    assert box.writes() == [] and box.accounts == {}


def test_a_push_stopping_midway_exits_4_with_what_was_written(make, home: Home):
    rt, box = make("8.02")
    box.refuse_actions = {"SetConfigPassword"}  # listed in the description, refused by the box
    r = home.cli("push", MAC, env={LOGIN_ENV: LOGIN})
    assert r.returncode == 4, r.stdout + r.stderr
    assert "SetConfigPassword" in r.stderr and "invalid action" in r.stderr
    assert "Written before it stopped: trunk[0], client[provisioner-101], client[provisioner-103]." in r.stderr
    assert {c["client_id"] for c in box.clients} == {"provisioner-101", "provisioner-103"}
    assert rt.store.credentials(MAC, "active") == {}, "nothing promoted: the new credentials stay pending"
