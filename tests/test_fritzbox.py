"""FRITZ!Box over TR-064: the real fritzconnection client against the TR-064 test box (tests/tr064_box.py),
which serves the real FRITZ!OS 8.02 (7530) and 7.57 (7590) descriptions and checks every call against them.

8.02 runs over TLS (certificate pinned on first contact), 7.57 over plain HTTP (no TLS port answers).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from conftest import REPO, Home
from tr064_box import TR064Box
from provisioner import routers
from provisioner.drivers.base import AuthenticationFailed, ConfirmationTimeout, PinMismatch, Unreachable
from provisioner.drivers.fritzbox import CharRule, describe_methods
from provisioner.inventory import load_inventory
from provisioner.runtime import Runtime
from provisioner.vendors import load_catalog
from provisioner.yamlsrc import ProblemsError

MAC = "3ca62f112233"
LOGIN_ENV = "TEST_FRITZ_LOGIN"
LOGIN = "Dedicated-Login-7710"
TRUNK_PASSWORD = "Trunk/Pass=word+42"  # the operator's, with characters phone formats dislike: the box takes them
LINES = ("101", "103")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def router_yaml(box: TR064Box, trunk_file: Path, lines=LINES, extra: str = "") -> str:
    tls_port = box.tls_port if box.tls else _closed_port()
    return f"""
routers:
  - mac: {MAC[:2]}:{MAC[2:4]}:{MAC[4:6]}:{MAC[6:8]}:{MAC[8:10]}:{MAC[10:]}
    profile: avm
    model: {box.model}
    site: lab
    name: office box
    address: 127.0.0.1
    management:
      user: provisioner
      port: {box.port}
      tls_port: {tls_port}
      password_env: {LOGIN_ENV}
    trunks:
      - index: 0
        registrar: sip.provider.example
        number: "+33102030401"  # line 101's number (inventory.yaml): the box rings 101 for it
        username: "4930123456"
        password_file: {trunk_file}
    lines: [{", ".join(f'"{x}"' for x in lines)}]
    options: {{poll_interval: 0.05, confirm_timeout: 5}}
{extra}"""


@pytest.fixture(params=["8.02", "7.57"])
def box(request):
    fw = request.param
    b = TR064Box(fw, users={"provisioner": LOGIN}, tls=(fw == "8.02")).start()
    yield b
    b.stop()
    assert not b.violations, "calls that the real descriptions do not allow:\n" + "\n".join(b.violations)


@pytest.fixture
def setup(home: Home, box: TR064Box, tmp_path: Path, monkeypatch):
    trunk = tmp_path / "trunk.pw"
    trunk.write_text(TRUNK_PASSWORD + "\n")
    trunk.chmod(0o600)
    with open(home.inventory, "a") as f:
        f.write(router_yaml(box, trunk))
    monkeypatch.setenv(LOGIN_ENV, LOGIN)
    rt = Runtime(home=home.path, inventory_path=home.inventory)
    yield rt, box, home
    rt.store.close()


def _chars_ok(value: str, rule: tuple[int, int, str]) -> bool:
    lo, hi, allowed = rule
    return lo <= len(value) <= hi and set(value) <= set(allowed)


def test_push_trunk_handsets_config_password_and_no_drift(setup):
    rt, box, _ = setup
    steps: list[str] = []
    out = routers.push(rt, MAC, "test", progress=steps.append)
    assert out.ok, out.drift
    assert out.facts["model"] == box.model and out.facts["firmware"] == box.display_version
    assert out.facts["lan_mac"] == "3c:a6:2f:11:22:33"
    assert out.facts["tr069"]["acs_url"] and out.facts["upnp"]["enabled"] is True
    assert out.facts["transport"].startswith("https" if box.tls else "http ")
    # the trunk, from the operator's file
    acc = box.accounts[0]
    assert (acc["NewVoIPRegistrar"], acc["NewVoIPUsername"], acc["NewVoIPPassword"]) == (
        "sip.provider.example", "4930123456", TRUNK_PASSWORD)
    # one client per handset, each with its own password to the box's rules
    clients = {c["client_id"]: c for c in box.clients}
    assert set(clients) == {"provisioner-101", "provisioner-103"}
    assert {c["username"] for c in clients.values()} == {"ip101", "ip103"}
    assert clients["provisioner-101"]["phone_name"] == "reception"
    creds = rt.store.credentials(MAC, "active")
    assert set(creds) == {"login", "config", "trunk:0", "client:101", "client:103"}
    passwords = [c["password"] for c in clients.values()] + [box.config_password]
    assert len(set(passwords)) == len(passwords), "every handset and the box get their own password"
    for c in clients.values():
        assert _chars_ok(c["password"], box.rule("client_password"))
        assert creds[f"client:{c['client_id'].split('-')[1]}"].reveal() == c["password"]
    # the config password replaced with a unique one kept in the store
    assert box.config_password != box.factory_password and not box.default_password_active
    assert _chars_ok(box.config_password, box.rule("config_password"))
    assert creds["config"].reveal() == box.config_password
    assert rt.store.device(MAC).state == "provisioned" and rt.store.device(MAC).vendor == "avm"
    # read-back without drift; a second push writes nothing
    st = routers.status(rt, MAC)
    assert st.error is None and st.drift_count == 0, st.drift
    before = len(box.calls)
    again = routers.push(rt, MAC, "test")
    assert again.ok and again.result.changed == [] and again.changed_credentials == []
    assert [a for _, a in box.calls[before:] if not a.startswith(("Get", "X_AVM-DE_Get"))] == []
    assert rt.store.credentials(MAC, "active") == creds
    actions = [e["action"] for e in rt.store.audit_entries(MAC)]
    assert "router.provisioned" in actions and "router.added" in actions


def test_drift_is_seen_and_repaired(setup):
    rt, box, _ = setup
    assert routers.push(rt, MAC, "test").ok
    box.clients[0]["phone_name"] = "renamed on the box"
    box.accounts[0]["NewVoIPRegistrar"] = "sip.elsewhere.example"
    box.clients.append({"password": "x" * 10, "username": "ip999", "phone_name": "stray", "client_id":
                        "provisioner-999", "outgoing": "", "incoming": "", "external": False, "internal": "**629"})
    st = routers.status(rt, MAC)
    keys = {d.key for d in st.drift if d.counts}
    assert keys == {"client[provisioner-101].phone_name", "trunk[0].registrar", "client[provisioner-999]"}, keys
    fixed = routers.push(rt, MAC, "test")
    assert fixed.ok and "client[provisioner-999]" in fixed.result.removed
    assert {c["client_id"] for c in box.clients} == {"provisioner-101", "provisioner-103"}
    assert box.accounts[0]["NewVoIPRegistrar"] == "sip.provider.example"


def test_reset_then_reenrol_with_new_passwords(setup):
    rt, box, _ = setup
    assert routers.push(rt, MAC, "test").ok
    old = {c["client_id"]: c["password"] for c in box.clients}
    old_config = box.config_password
    assert routers.reboot(rt, MAC, "test").action == "reboot" and box.reboots == 1
    res = routers.reset(rt, MAC, "test")
    assert box.resets == 1 and box.clients == [] and box.accounts == {} and box.default_password_active
    assert res.state == "reset-pending" and "sticker" in res.instructions
    assert rt.store.credentials(MAC, "active") == {} and rt.store.device(MAC).state == "reset-pending"
    if box.tls:
        box.new_certificate()  # a reset box may show a new certificate: the reset forgot the pin
    # the technician creates the management user again, then re-enrols with push
    box.users["provisioner"] = LOGIN
    again = routers.push(rt, MAC, "test")
    assert again.ok and rt.store.device(MAC).state == "provisioned"
    new = {c["client_id"]: c["password"] for c in box.clients}
    assert set(new) == set(old) and all(new[k] != old[k] for k in new)
    assert box.config_password not in (old_config, box.factory_password)


def test_second_factor_flow_resumes_after_confirmation(setup):
    rt, box, _ = setup
    box.second_factor_actions = {"X_AVM-DE_SetClient4", "SetConfigPassword", "X_AVM-DE_AddVoIPAccount"}
    told: list[str] = []

    def technician(text: str) -> None:
        told.append(text)
        threading.Timer(0.2, box.confirm).start()  # someone presses the button a moment later

    out = routers.push(rt, MAC, "test", on_confirm=technician)
    assert out.ok and out.second_factor
    assert len(told) == 1, "one confirmation covers the whole session (the token is kept)"
    assert "error 866" in told[0] and "press a button on the FRITZ!Box" in told[0]
    assert "dial *1234" in told[0] and "5 s" in told[0]
    assert ("X_AVM-DE_Auth", "SetConfig") in box.calls and ("X_AVM-DE_Auth", "GetState") in box.calls
    assert len(box.clients) == 2 and not box.default_password_active


def test_second_factor_times_out_clearly_then_resumes(setup):
    rt, box, _ = setup
    box.second_factor_actions = {"X_AVM-DE_SetClient4"}
    told: list[str] = []
    with pytest.raises(ConfirmationTimeout) as e:
        routers.push(rt, MAC, "test", on_confirm=told.append, confirm_timeout=0.4)
    msg = str(e.value)
    assert "nobody confirmed X_AVM-DE_SetClient4 at the box within 0.4 s" in msg
    assert "press a button on the FRITZ!Box" in msg and "dial *1234" in msg and "--confirm-timeout" in msg
    assert e.value.exit_code == 4 and box.clients == []
    assert "stopped" in box.auth_sessions.values(), "the waiting confirmation was cancelled at the box"
    pending = rt.store.credentials(MAC, "pending")
    assert {"client:101", "client:103", "config"} <= set(pending) and not rt.store.credentials(MAC, "active")
    # the next run, with someone at the box, resumes with the very same pending passwords
    out = routers.push(rt, MAC, "test", on_confirm=lambda t: threading.Timer(0.1, box.confirm).start())
    assert out.ok
    got = {c["client_id"]: c["password"] for c in box.clients}
    assert got["provisioner-101"] == pending["client:101"].reveal()
    assert rt.store.credentials(MAC, "active")["client:103"] == pending["client:103"]
    assert rt.store.credentials(MAC, "pending") == {}


def test_wrong_login_is_reported_clearly(setup, monkeypatch):
    rt, box, _ = setup
    monkeypatch.setenv(LOGIN_ENV, "not-the-password")
    # fritzconnection falls back to these when it is given no password: the driver always gives its own
    monkeypatch.setenv("FRITZ_USERNAME", "provisioner")
    monkeypatch.setenv("FRITZ_PASSWORD", LOGIN)
    with pytest.raises(AuthenticationFailed) as e:
        routers.push(rt, MAC, "test")
    assert "refused the login of user 'provisioner'" in str(e.value)
    assert "not-the-password" not in str(e.value)
    assert box.clients == [] and box.accounts == {}


@pytest.mark.parametrize("box", ["8.02"], indirect=True)  # FRITZ!OS 7.57 runs without TLS here: nothing to pin
def test_changed_certificate_is_refused(setup):
    rt, box, _ = setup
    assert box.tls
    assert routers.push(rt, MAC, "test").ok
    box.new_certificate()
    with pytest.raises(PinMismatch) as e:
        routers.push(rt, MAC, "test")
    assert "not the one pinned on first contact" in str(e.value)
    assert f"provisioner routers forget-key {MAC}" in str(e.value)
    st = routers.status(rt, MAC)
    assert "not the one pinned" in st.error
    assert routers.forget_key(rt, MAC, "test") == ["TLS certificate"]
    assert routers.push(rt, MAC, "test").ok
    box.stop_tls()  # TLS was seen once: plain HTTP is never used for this box again
    with pytest.raises(Unreachable) as e:
        routers.push(rt, MAC, "test")
    assert "pinned for it before, so plain HTTP is refused" in str(e.value)


def test_trunk_password_from_environment_and_rotation(setup, monkeypatch, tmp_path):
    rt, box, home = setup
    text = home.inventory.read_text().replace(f"password_file: {tmp_path / 'trunk.pw'}", "password_env: TRUNK0_PW")
    home.inventory.write_text(text)
    rt.reload_inventory()
    monkeypatch.delenv("TRUNK0_PW", raising=False)
    from provisioner.errors import InputError
    with pytest.raises(InputError, match="environment variable TRUNK0_PW is not set"):
        routers.push(rt, MAC, "test")
    monkeypatch.setenv("TRUNK0_PW", "first-trunk-pw")
    assert routers.push(rt, MAC, "test").ok
    monkeypatch.setenv("TRUNK0_PW", "second-trunk-pw")  # the operator rotated it at the provider
    out = routers.push(rt, MAC, "test")
    assert out.ok and out.changed_credentials == ["trunk:0"] and out.result.changed == ["trunk[0]"]
    assert box.accounts[0]["NewVoIPPassword"] == "second-trunk-pw"
    assert rt.store.credentials(MAC, "active")["trunk:0"].reveal() == "second-trunk-pw"
    box.accounts[5] = dict(box.accounts[0], NewVoIPAccountIndex="5")  # someone else's account: not ours to remove
    text = home.inventory.read_text()
    start = text.index("    trunks:\n")
    home.inventory.write_text(text[:start] + text[text.index("    lines: [", start):])
    rt.reload_inventory()
    gone = routers.push(rt, MAC, "test")  # the trunk left the inventory: it leaves the box and the store
    assert gone.ok and gone.result.removed == ["trunk[0]"] and set(box.accounts) == {5}
    assert "trunk:0" not in rt.store.credentials(MAC, "active")


def test_cli_push_and_routers(setup, home):
    rt, box, _ = setup
    env = {LOGIN_ENV: LOGIN}
    r = home.cli("check", env=env)
    assert r.returncode == 0, r.stderr

    def audit_of_the_box() -> set[tuple[str, str]]:
        r = home.cli("audit", "--json", "-", env=env)
        assert r.returncode in (0, 3), r.stderr
        return {(f["type"], f["severity"]) for f in json.loads(r.stdout)["findings"] if f["device"] == MAC}
    row = next(d for d in json.loads(home.cli("devices", "--json", env=env, check=True).stdout) if d["mac"] == MAC)
    assert (row["kind"], row["state"], row["in_sync"]) == ("router", "enrolling", False)
    assert f"provisioner push {MAC}" in home.cli("explain", MAC, env=env, check=True).stdout
    # the nightly audit reads the box back: on its factory setup before the first push
    assert {("never-enrolled", "high"), ("factory-default", "critical")} <= audit_of_the_box()
    r = home.cli("push", MAC, "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and res["state"] == "provisioned" and sorted(res["credentials_changed"]) == [
        "client:101", "client:103", "config", "login", "trunk:0"]
    assert "→ pushing" in r.stderr
    r = home.cli("routers", "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["mac"] == MAC and rows[0]["drift_count"] == 0 and rows[0]["facts"]["model"] == box.model
    r = home.cli("routers", env=env)
    assert r.returncode == 0 and "office box" in r.stdout
    # a pushed router is in the inventory: neither an orphan in the audit nor "not in inventory" in devices
    # no drift, no orphan, no factory password; the test box has UPnP on and an operator's TR-069 ACS (info)
    assert audit_of_the_box() == {("exposure", "low"), ("exposure", "info")}
    # reprovision and reset take routers too: new passwords pushed and read back; a reset over TR-064
    clients = {c["client_id"]: c["password"] for c in box.clients}
    r = home.cli("reprovision", MAC, "--json", env=env)
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["ok"] and again["generation"] > res["generation"] and "client:101" in again["credentials_changed"]
    assert all(c["password"] != clients[c["client_id"]] for c in box.clients)
    r = home.cli("reset", MAC, "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "reset-pending" and box.resets == 1
    box.users["provisioner"] = LOGIN  # the technician creates the management user again
    if box.tls:
        box.new_certificate()
    assert home.cli("push", MAC, env=env).returncode == 0
    row = next(d for d in json.loads(home.cli("devices", "--json", env=env, check=True).stdout) if d["mac"] == MAC)
    assert row["in_inventory"] is True and row["state"] == "provisioned" and row["in_sync"] is True
    r = home.cli("push", "80:5e:c0:12:34:56", env=env)
    assert r.returncode == 2 and "is a phone" in r.stderr
    r = home.cli("push", "00:11:22:33:44:55", env=env)
    assert r.returncode == 2 and "no router" in r.stderr
    box.users["provisioner"] = "changed-on-the-box"
    r = home.cli("push", MAC, env={LOGIN_ENV: "also-wrong"})
    assert r.returncode == 4 and "refused the login" in r.stderr
    for text in (r.stdout, r.stderr):
        for s in rt.store.credentials(MAC, "active").values():
            assert s.reveal() not in text


# ---- inventory: routers: cross-checks as FILE:LINE ------------------------------------------------------

BAD = """
routers:
  - mac: 3c:a6:2f:00:00:01
    profile: netgear
    model: X
    site: lab
    address: 10.0.0.1
    management: {user: admin, password_env: ADMIN_PW}
  - mac: 80:5e:c0:12:34:56
    profile: avm
    model: FRITZ!Box 7590
    site: lab
    address: 10.0.0.2
    management: {user: admin}
  - mac: 3c:a6:2f:00:00:03
    profile: avm
    model: FRITZ!Box 9999
    site: nowhere
    address: 10.0.0.3
    management: {user: admin}
  - mac: 3c:a6:2f:00:00:04
    profile: avm
    model: FRITZ!Box 7590
    site: lab
    address: 10.0.0.4
    management: {user: admin}
    lines: ["101", "555"]
    options: {no_such_option: 1}
  - mac: 3c:a6:2f:00:00:04
    profile: openwrt
    model: generic
    site: lab
    address: 10.0.0.5
    management: {user: root}
  - mac: 3c:a6:2f:00:00:06
    profile: openwrt
    model: generic
    site: lab
    address: 10.0.0.6
    management: {user: root}
    lines: ["102"]
  - mac: 3c:a6:2f:00:00:07
    profile: avm
    model: FRITZ!Box 7590
    site: lab
    address: 10.0.0.7
    management: {user: admin}
    trunks:
      - {registrar: sip.example, number: "4930", username: u, password: plain-in-yaml}
      - {index: 1, registrar: sip.example, number: "4930", username: u, password_env: A, password_file: b}
"""


LINES_102 = 'lines: ["102"]'


def test_inventory_router_cross_checks(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text((REPO / "inventory.yaml").read_text() + BAD)
    with pytest.raises(ProblemsError) as e:
        load_inventory(inv, load_catalog(REPO / "vendors"))
    text = str(e.value)
    lines = inv.read_text().splitlines()

    def at(needle: str, nth: int = 0) -> int:
        hits = [i + 1 for i, ln in enumerate(lines) if needle in ln]
        return hits[nth]
    expect = [
        f"{inv}:{at('profile: netgear')}: routers[0].profile: unknown router profile 'netgear' (known: avm, openwrt)",
        f"{inv}:{at('mac: 80:5e:c0:12:34:56', 1)}: routers[1].mac: duplicate MAC, already used by devices[0]",
        f"{inv}:{at('FRITZ!Box 9999')}: routers[2].model: unknown avm model 'FRITZ!Box 9999'",
        f"{inv}:{at('site: nowhere')}: routers[2].site: unknown site 'nowhere'",
        f"routers[3].lines[1]: unknown line extension '555': no device line in site lab has it",
        "routers[6].trunks[0].password: unknown field; secrets are generated and kept encrypted",
        "routers[6].trunks[1]: give the trunk password's source: exactly one of password_env or password_file",
        f"{inv}:{at('no_such_option')}: routers[3].options.no_such_option: unknown option for profile avm",
        f"routers[4].mac: duplicate MAC, already used by routers[3]",
        f"{inv}:{at(LINES_102)}: routers[5].lines: OpenWrt routers register no handsets",
    ]
    for want in expect:
        assert want in text, f"missing: {want}\n---\n{text}"


TWO = """
routers:
  - mac: 3c:a6:2f:00:00:01
    profile: avm
    model: FRITZ!Box 7590
    site: lab
    address: 10.0.0.1
    management: {user: admin, password_file: secrets/admin.pw}
    lines: ["101"]
  - mac: 3c:a6:2f:00:00:02
    profile: avm
    model: FRITZ!Box 7530
    site: lab
    address: 10.0.0.2
    management: {user: admin, password_env: X}
    lines: [%s]
"""


def test_inventory_router_lines_once_and_resolved(tmp_path):
    inv = tmp_path / "inventory.yaml"
    base = (REPO / "inventory.yaml").read_text()
    inv.write_text(base + TWO % '"101"')
    with pytest.raises(ProblemsError) as e:
        load_inventory(inv, load_catalog(REPO / "vendors"))
    assert "routers[1].lines[0]: extension '101' is already served by routers[0]" in str(e.value)
    inv.write_text(base + TWO % '"102", "103"')
    loaded = load_inventory(inv, load_catalog(REPO / "vendors"))
    r = loaded.router("3ca62f000001")
    assert r.password_file == str(tmp_path / "secrets" / "admin.pw") and r.settings.timezone == "Europe/Paris"
    assert set(loaded.routers) == {"3ca62f000001", "3ca62f000002"} and loaded.router_index["3ca62f000002"] == 1
    assert loaded.router("3ca62f000002").lines == ("102", "103")
    assert len(loaded.resolved) == 3  # the phones are untouched


def test_describe_methods_and_rules():
    steps = describe_methods("button,dtmf;*1234,googleauth")
    assert steps[0].startswith("press a button") and steps[1].endswith("dial *1234") and "authenticator" in steps[2]
    rule = CharRule(8, 12, "ABCDEFGHJKabcdefghjk2345$").password_rule()
    assert 8 <= rule.length <= 12 and set(rule.alphabet) <= set("ABCDEFGHJKabcdefghjk2345")  # "$" is not format-safe
    assert CharRule(8, 12, "ab").check("abc") == "length 3 not within 8..12"
    assert "not allowed" in CharRule(1, 12, "ab").check("abc")
    assert os.environ.get(LOGIN_ENV) is None
