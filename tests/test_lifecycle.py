"""Lifecycle against real peers (Kamailio, sipp, curl): reset (remote and guided), revoke, decommission,
reveal with a one-time code, unlock — behaviour, registrar effects, audit and exit codes — and no secret on
any output but the stdout of a reveal with a valid code.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest

from conftest import PROVISIONER, REPO, Home, poll, start_server
from kamailio.peer import (need_peers, NotifyPhone, Phone, kamailio_inventory, refused, registers, start_kamailio)
from provisioner.runtime import Runtime

MAC = "805ec0123456"
DOMAIN = "prov.test"
QUICK = {"PROVISIONER_NOTIFY_TIMEOUT": "0.3"}


def peers() -> None:
    need_peers()


@pytest.fixture
def kam(home: Home, tmp_path):
    peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN, location_db=True)
    home.inventory.write_text(kamailio_inventory(home.inventory.read_text(), k))
    yield k
    k.stop()


def store(home: Home):
    return Runtime(home=home.path, inventory_path=home.inventory).store


def secrets_of(home: Home) -> set[str]:
    """Every secret the store ever generated for any device (to check outputs against)."""
    import sqlalchemy as sa
    from provisioner.store.schema import credentials
    st = store(home)
    with st.engine.connect() as c:
        rows = c.execute(sa.select(credentials.c.mac, credentials.c.name, credentials.c.generation,
                                   credentials.c.sealed)).all()
    return {st.keyring.open(r.sealed, f"{r.mac}|{r.name}|{r.generation}").reveal() for r in rows}


def fetch_until(phone: Phone, srv, expect: int, anonymous: bool = False) -> int:
    """The server reuses a device's row for up to a second after a change made elsewhere: fetch until the
    answer is `expect` (bounded, a few requests), and return the last answer."""
    return poll(lambda: phone.fetch(srv, anonymous=anonymous), lambda s: s == expect, timeout=10, every=0.4)


def test_remote_reset_with_sip_notify(home: Home, kam, tmp_path):
    """A vendor profile with a reset event: the phone gets the NOTIFY, resets, comes back factory-fresh
    and enrols; `reset --wait` confirms; the old SIP password is refused at once, the new one works."""
    vendors = tmp_path / "vendors"
    shutil.copytree(REPO / "vendors", vendors)
    y = vendors / "yealink.yaml"
    y.write_text(y.read_text().replace("  reset: null                        # no documented SIP factory reset",
                                       '  reset: "check-sync;reset=true"     # test profile'))
    env = {**QUICK, "PROVISIONER_VENDORS": str(vendors)}
    srv = start_server(home, env=env)
    notify = proc = None
    try:
        phone = Phone(MAC)
        assert phone.fetch(srv) == 200
        user, old = phone.line(1)
        notify = NotifyPhone(tmp_path / "sip")
        assert registers(kam, user, old, contact_port=notify.port)
        proc = subprocess.Popen([*PROVISIONER, "--home", str(home.path), "--inventory", str(home.inventory),
                                 "reset", MAC, "--wait", "30", "--json"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
        rc, events = notify.wait(timeout=20)
        assert rc == 0 and events == ["check-sync"]
        assert refused(kam, user, old), "the old password is refused from the reset on"
        fresh = Phone(MAC)  # factory-fresh: no credentials, first fetch from the site enrols it
        assert fetch_until(fresh, srv, 200) == 200
        out, err = proc.communicate(timeout=40)
        assert proc.returncode == 0, err
        res = json.loads(out)
        assert res["method"] == "sip-notify" and res["manual"] is False and res["confirmed"] is True
        assert res["state"] == "provisioned" and "200 OK" in res["notify"]
        _, new = fresh.line(1)
        assert registers(kam, user, new) and refused(kam, user, old)
        actions = [e["action"] for e in store(home).audit_entries(MAC)]
        assert "device.reset" in actions and "reset.sent" in actions and "device.enrolled" in actions
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        if notify:
            notify.stop()
        srv.stop()


def test_guided_reset_revoke_decommission(home: Home, kam):
    srv = start_server(home, env=QUICK)
    try:
        phone = Phone(MAC)
        assert phone.fetch(srv) == 200
        user, pw1 = phone.line(1)
        assert registers(kam, user, pw1)

        # reset without a remote reset in the profile: instructions, exit 4 when it does not come back in time
        r = home.cli("reset", MAC, "--wait", "1", env=QUICK)
        assert r.returncode == 4 and "Hold the OK key" in r.stdout and "did not come back" in r.stderr
        assert store(home).device(MAC).state == "reset-pending"
        assert refused(kam, user, pw1)
        phone = Phone(MAC)  # factory-fresh: enrols again with the new generation
        assert fetch_until(phone, srv, 200) == 200
        _, pw2 = phone.line(1)
        assert registers(kam, user, pw2) and store(home).device(MAC).state == "provisioned"
        stale = Phone(MAC)
        stale.cfg = phone.cfg  # a copy of what the phone holds now, to show it stops working

        # revoke: the registrar refuses the old ones at once; the phone's next fetch enrols it again
        r = home.cli("credentials", "revoke", MAC, "--json", check=True, env=QUICK)
        res = json.loads(r.stdout)
        assert res["state"] == "enrolling" and res["generation"] == 3
        assert refused(kam, user, pw2)
        assert fetch_until(phone, srv, 200, anonymous=True) == 200  # its first request: the reopened window
        _, pw3 = phone.line(1)
        assert registers(kam, user, pw3) and refused(kam, user, pw2)
        assert stale.fetch(srv) == 401  # and HTTPS refuses the revoked provisioning credentials

        # decommission: every account of the device leaves the registrar, the server refuses it
        r = home.cli("decommission", MAC, "--json", check=True)
        assert json.loads(r.stdout)["state"] == "decommissioned"
        assert "101" not in kam.rows() and "102" not in kam.rows() and "103" in kam.rows()
        assert refused(kam, user, pw3)
        assert fetch_until(phone, srv, 401) == 401 and Phone(MAC).fetch(srv) == 401
        # exit codes
        assert home.cli("reprovision", MAC).returncode == 2  # decommissioned
        assert home.cli("reset", MAC).returncode == 2
        assert home.cli("credentials", "revoke", MAC).returncode == 2
        assert home.cli("decommission", "80:5e:c0:99:99:99").returncode == 2
        assert home.cli("unlock", "805ec0123457").returncode == 2  # not locked
        assert home.cli("reset", "not-a-mac").returncode == 2
        entries = store(home).audit_entries(MAC, limit=200)
        actions = {e["action"]: e for e in entries}
        for a in ("device.reset", "credentials.revoked", "device.decommissioned"):
            assert actions[a]["actor"].startswith("cli:") and actions[a]["why"]
    finally:
        srv.stop()
    leaked = [s for s in secrets_of(home) if s in (home.capture / "cli.log").read_text()]
    assert not leaked, f"{len(leaked)} secret(s) on a command's output"


def test_reveal_with_a_one_time_code(home: Home, kam):
    """reveal: a valid code shows the secrets on stdout (and nowhere else), the revealed SIP password is
    the one the registrar accepts; during a rotation the pending ones are shown apart; the seed is sealed
    in the store; a refused code exits 5 and is audited."""
    home.cli("devices", check=True)
    base = [*PROVISIONER, "--home", str(home.path), "--inventory", str(home.inventory)]
    enroll = subprocess.run([*base, "otp", "enroll", "--operator", "hana"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert enroll.returncode == 0 and enroll.stdout.startswith("otpauth://totp/")
    seed = parse_qs(urlparse(enroll.stdout.strip()).query)["secret"][0]
    db = (home.path / "state.db").read_bytes()
    assert seed.encode() not in db
    with sqlite3.connect(home.path / "state.db") as c:
        assert c.execute("select count(*) from operator_otp where operator='hana'").fetchone()[0] == 1

    totp = pyotp.TOTP(seed)

    def reveal(earlier: bool = False) -> tuple[int, dict | None, str]:
        """(exit code, the JSON, stderr); a failing assertion never prints the JSON's secrets. A code is
        accepted once: the first reveal uses the previous 30 s step's code (still valid), the next one
        the current step's."""
        for attempt in range(2):  # the step may turn between reading the code and checking it
            code = totp.at(time.time() - 30) if earlier else totp.now()
            r = subprocess.run([*base, "credentials", "reveal", MAC, "--operator", "hana", "--otp", code,
                                "--json"], capture_output=True, text=True, cwd=REPO, timeout=60)
            if r.returncode == 0:
                return 0, json.loads(r.stdout), r.stderr
            if not earlier:  # rare: this step's code was used already: the next step's (bounded wait)
                time.sleep(30.2 - time.time() % 30)
            earlier = False
        return r.returncode, None, r.stderr

    rc, res, err = reveal(earlier=True)
    assert rc == 0 and res["generation"] == 1 and "pending" not in res
    assert set(res["credentials"]) == {"provisioning", "admin", "user", "sip:101", "sip:102"}
    from provisioner.secret import Secret
    assert registers(kam, "101", Secret(res["credentials"]["sip:101"]))
    assert not any(v in err for v in res["credentials"].values())

    home.cli("reprovision", MAC, check=True, env=QUICK)
    rc, res2, _ = reveal()
    assert rc == 0 and res2["credentials"] == res["credentials"] and res2["pending_generation"] == 2
    assert set(res2["pending"]) == set(res["credentials"]) and res2["pending"]["sip:101"] != res["credentials"]["sip:101"]

    r = subprocess.run([*base, "credentials", "reveal", MAC, "--operator", "hana", "--otp", "12345x"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 5 and r.stdout == "" and "refused" in r.stderr
    entries = store(home).audit_entries(MAC, limit=100)
    revealed = [e for e in entries if e["action"] == "credentials.revealed"]
    assert len(revealed) == 2 and all(e["actor"] == "cli:hana" for e in revealed)
    assert not any(v in e["details"] for e in revealed for v in res["credentials"].values())
    assert any(e["action"] == "otp.refused" for e in store(home).audit_entries(None, limit=100))


def test_unlock(home: Home, kam):
    text = home.inventory.read_text().replace("networks: [127.0.0.0/8, 192.168.50.0/24]", "networks: [127.0.0.0/24]")
    home.inventory.write_text(text)
    srv = start_server(home)
    try:
        phone = Phone(MAC)
        assert phone.fetch(srv) == 200
        assert phone.fetch(srv, extra=("--interface", "127.0.1.9")) == 401  # valid credentials from elsewhere
        assert store(home).device(MAC).state == "locked"
        assert home.cli("reprovision", MAC).returncode == 2
        r = home.cli("unlock", MAC, "--why", "phone moved back", "--json", check=True)
        assert json.loads(r.stdout)["state"] == "provisioned"
        assert fetch_until(phone, srv, 200) == 200
        user, pw = phone.line(1)
        assert registers(kam, user, pw)
        e = store(home).audit_entries(MAC, limit=5)
        assert any(x["action"] == "device.unlocked" and x["why"] == "phone moved back" for x in e)
    finally:
        srv.stop()
