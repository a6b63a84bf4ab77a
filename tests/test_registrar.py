"""Registrar sync with real peers: Kamailio (SQLite and PostgreSQL subscriber tables) and sipp REGISTERs,
the Asterisk PJSIP include file, and a reprovision end to end (NOTIFY answered by sipp, the new config
fetched by curl, the new password accepted and the old one refused by Kamailio).

No assertion ever shows a password: they travel as Secret (masked in reprs) and sipp gets them on its
command line only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from conftest import PROVISIONER, REPO, Home, need, start_server
from kamailio.peer import (need_peers, NotifyPhone, Phone, forbidden, kamailio_inventory, refused, registers,
                           sipp_register, start_kamailio)
from provisioner.inventory import LineSpec, ResolvedDevice, ResolvedRegistrar
from provisioner.registrar import RegistrarError
from provisioner.registrar.asterisk import AsteriskRegistrar, md5_cred
from provisioner.registrar.kamailio import KamailioRegistrar
from provisioner.runtime import Runtime
from provisioner.secret import Secret

MAC = "805ec0123456"
DOMAIN = "prov.test"


def peers() -> None:
    need_peers()


@pytest.fixture
def kamailio(tmp_path):
    peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN)
    yield k
    k.stop()


def device(mac: str, *exts: str, auth: dict | None = None) -> ResolvedDevice:
    lines = tuple(LineSpec(e, f"Line {e}", (auth or {}).get(e), None, None) for e in exts)
    return ResolvedDevice(mac=mac, vendor="yealink", model="T46G", site="lab", name=None, lines=lines, settings=None)


# ---- Kamailio ------------------------------------------------------------------------------------

def test_kamailio_holds_only_ha1_and_takes_changes_at_once(kamailio, tmp_path):
    k = kamailio
    reg = KamailioRegistrar(f"sqlite:///{k.db}", str(k.db), DOMAIN)
    a, b = device("805ec0000001", "201", "202"), device("805ec0000002", "203")
    pa, pa2, pb = Secret("Alpha-7xQ2-pass"), Secret("Alpha-second-9"), Secret("Bravo-3kP8-pass")
    with closing(sqlite3.connect(k.db)) as c, c:  # another domain's account: never touched
        c.execute("INSERT INTO subscriber(username, domain, ha1, ha1b) VALUES ('201', 'other.test', 'x', 'y')")
    reg.set_many([(a, {"201": pa, "202": pa2}), (b, {"203": pb})])
    rows = k.rows()
    assert set(rows) == {"201", "202", "203"}
    assert rows["201"] == ("", hashlib.md5(f"201:{DOMAIN}:{pa.reveal()}".encode()).hexdigest(),
                           hashlib.md5(f"201@{DOMAIN}:{DOMAIN}:{pa.reveal()}".encode()).hexdigest())
    raw = k.db.read_bytes() + (k.db.with_name(k.db.name + "-wal").read_bytes()
                               if k.db.with_name(k.db.name + "-wal").exists() else b"")
    assert not any(p.reveal().encode() in raw for p in (pa, pa2, pb)), "no plaintext password in Kamailio's DB"
    assert registers(k, "201", pa) and registers(k, "203", pb)
    assert sipp_register(k, "201", pa, auth=f"201@{DOMAIN}") == 0  # user@domain: checked against ha1b
    assert refused(k, "201", pb) and refused(k, "202", pa)
    assert reg.holds(a, {"201": pa, "202": pa2}) is True and reg.holds(a, {"201": pb, "202": pa2}) is False
    assert reg.list() == [{"username": u, "domain": DOMAIN} for u in ("201", "202", "203")]
    # a change applies at the next REGISTER, no reload
    new = Secret("Alpha-new-5tR1x")
    reg.set(a, {"201": new, "202": pa2})
    assert refused(k, "201", pa) and registers(k, "201", new)
    reg.remove(a)
    assert refused(k, "201", new) and [r["username"] for r in reg.list()] == ["203"]
    with closing(sqlite3.connect(k.db)) as c:
        assert c.execute("SELECT count(*) FROM subscriber WHERE domain = 'other.test'").fetchone()[0] == 1


def test_kamailio_settings_errors_name_the_problem(tmp_path, monkeypatch):
    def settings(**kw) -> ResolvedRegistrar:
        return ResolvedRegistrar(kind="kamailio", host="127.0.0.1", port=5060, domain=DOMAIN, transport="udp", **kw)
    with pytest.raises(RegistrarError, match="does not exist"):
        KamailioRegistrar.from_settings(settings(db="missing.sqlite"), tmp_path)
    monkeypatch.delenv("PROVISIONER_KAMAILIO_DB", raising=False)
    with pytest.raises(RegistrarError, match="give `db`"):
        KamailioRegistrar.from_settings(settings(), tmp_path)
    monkeypatch.delenv("KAMAILIO_TEST_PW", raising=False)
    with pytest.raises(RegistrarError, match="KAMAILIO_TEST_PW"):
        KamailioRegistrar.from_settings(settings(db="postgresql://kamailio@127.0.0.1:1/k",
                                                 db_password_env="KAMAILIO_TEST_PW"), tmp_path)
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    reg = KamailioRegistrar.from_settings(settings(db=f"sqlite://{empty}"), tmp_path)
    with pytest.raises(RegistrarError, match="no subscriber table"):
        reg.set(device(MAC, "101"), {"101": Secret("Whatever-12345")})
    empty.unlink()
    with pytest.raises(RegistrarError, match="unable to open"):
        reg.set(device(MAC, "101"), {"101": Secret("Whatever-12345")})
    assert not empty.exists(), "never an empty Kamailio database created in its place"


def test_kamailio_on_postgresql(pg_cluster, tmp_path, monkeypatch):
    """Kamailio's own PostgreSQL database (db_postgres), the URL from the inventory, its password from the
    environment (the throwaway cluster trusts local connections, so any value works)."""
    peers()
    url = pg_cluster.new_database()  # postgresql+psycopg://postgres@127.0.0.1:PORT/NAME
    pg_url = url.replace("postgresql+psycopg://", "postgresql://")
    import sqlalchemy as sa
    eng = sa.create_engine(url)
    with eng.begin() as c:
        for f in ("standard-create.sql", "auth_db-create.sql"):
            c.exec_driver_sql((Path("/usr/share/kamailio/postgres") / f).read_text())
    eng.dispose()
    monkeypatch.setenv("KAMAILIO_TEST_PW", "not-checked-by-trust")
    reg = KamailioRegistrar.from_settings(ResolvedRegistrar(
        kind="kamailio", host="127.0.0.1", port=5060, domain=DOMAIN, transport="udp", db=pg_url,
        db_password_env="KAMAILIO_TEST_PW"), tmp_path)
    assert "not-checked-by-trust" not in repr(reg) and "not-checked" not in reg.target()
    pw = Secret("Pg-line-9sd8fQ")
    reg.set(device(MAC, "101"), {"101": pw})
    assert reg.list() == [{"username": "101", "domain": DOMAIN}]
    # a real Kamailio on the same database authenticates with it
    from kamailio.peer import Kamailio, free_udp_port, options_ping
    port = free_udp_port()
    work = tmp_path / "kpg"
    work.mkdir()
    log = open(work / "kamailio.log", "w")
    proc = subprocess.Popen(["kamailio", "-DD", "-E", "-f", str(REPO / "tests" / "kamailio" / "kamailio.cfg"),
                             "-m", "32", "-M", "8", "-Y", str(work / "run"), "-A", "DB_POSTGRES",
                             "-A", f'DBURL="{pg_url.replace("postgresql://", "postgres://")}"',
                             "-A", f"LISTEN=udp:127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    k = Kamailio(proc, port, work / "none", work, DOMAIN)
    try:
        deadline = time.monotonic() + 10
        while not options_ping(port, DOMAIN):
            assert proc.poll() is None and time.monotonic() < deadline, (work / "kamailio.log").read_text()[-2000:]
        assert registers(k, "101", pw)
        assert refused(k, "101", Secret("Wrong-password-1"))
        reg.remove(device(MAC, "101"))
        assert refused(k, "101", pw)
    finally:
        k.stop()


# ---- Asterisk ------------------------------------------------------------------------------------

def test_asterisk_include_file(tmp_path):
    calls = tmp_path / "reloads.txt"
    script = tmp_path / "reload.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')\n"
                      "sys.exit(3 if 'fail' in sys.argv else 0)\n")
    conf = tmp_path / "asterisk" / "pjsip_provisioner.conf"
    reg = AsteriskRegistrar.from_settings(ResolvedRegistrar(
        kind="asterisk", host="pbx", port=5060, domain="pbx.example.net", transport="udp",
        include_file="asterisk/pjsip_provisioner.conf", reload_command=(sys.executable, str(script), str(calls),
                                                                         "pjsip", "reload"), context="phones"),
        tmp_path)
    a = device("805ec0000001", "201", "202", auth={"202": "202x"})
    b = device("805ec0000002", "203")
    pa, pa2, pb = Secret("Ast-one-8hG2kq"), Secret("Ast-two-1mN7zp"), Secret("Ast-three-4tY6w")
    reg.set(a, {"201": pa, "202": pa2})
    reg.set(b, {"203": pb})
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert not any(p.reveal() in text for p in (pa, pa2, pb))
    assert f"md5_cred = {md5_cred('202x', 'pbx.example.net', pa2)}" in text
    assert "[201]\ntype = endpoint\ncontext = phones" in text and "auth = 201-auth\naors = 201" in text
    assert "[202-auth]\ntype = auth\nauth_type = md5\nusername = 202x\nrealm = pbx.example.net" in text
    assert calls.read_text().splitlines() == ["pjsip reload"] * 2
    assert [p.name for p in conf.parent.iterdir() if p.name.endswith(".tmp")] == []
    reg.set(b, {"203": pb})  # nothing changed: no write, no reload
    assert len(calls.read_text().splitlines()) == 2
    assert reg.holds(a, {"201": pa, "202": pa2}) and not reg.holds(a, {"201": pb, "202": pa2})
    assert [(x["username"], x["device"]) for x in reg.list()] == [("201", "805ec0000001"), ("202x", "805ec0000001"),
                                                                   ("203", "805ec0000002")]
    with pytest.raises(RegistrarError, match="already written for device 805ec0000002"):
        reg.set(device("805ec0000003", "203"), {"203": pa})  # same endpoint name from another device
    reg.remove_users(["202x"])
    assert [x["username"] for x in reg.list()] == ["201", "203"] and "[202]" not in conf.read_text()
    reg.remove(b)
    assert [x["username"] for x in reg.list()] == ["201"]
    failing = AsteriskRegistrar(conf, "pbx.example.net", "phones", (sys.executable, str(script), str(calls), "fail"))
    with pytest.raises(RegistrarError, match="reload command exited 3"):
        failing.set(b, {"203": pb})


# ---- inventory -----------------------------------------------------------------------------------

def test_no_password_in_the_inventory(home: Home):
    text = home.inventory.read_text().replace(
        "    networks: [127.0.0.0/8, 192.168.50.0/24]\n",
        "    networks: [127.0.0.0/8, 192.168.50.0/24]\n"
        "    registrar: {kind: kamailio, db: 'postgresql://kamailio:s3cret@db.example.net/kamailio'}\n")
    home.inventory.write_text(text)
    r = home.cli("check")
    assert r.returncode == 2
    assert "inventory.yaml:" in r.stderr and "db_password_env" in r.stderr and "s3cret" not in r.stderr


# ---- end to end ----------------------------------------------------------------------------------

def _store(home: Home) -> Runtime:
    import os
    return Runtime(home=home.path, inventory_path=home.inventory, state_url=os.environ.get("PROVISIONER_STATE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request, monkeypatch):
    """The provisioner's own store on SQLite, and on PostgreSQL (replicas) through PROVISIONER_STATE."""
    if request.param == "postgresql":
        monkeypatch.setenv("PROVISIONER_STATE", request.getfixturevalue("pg_cluster").new_database())
    else:
        monkeypatch.delenv("PROVISIONER_STATE", raising=False)
    return request.param


def test_reprovision_end_to_end_with_kamailio(home: Home, tmp_path, state):
    """The phone registers with what its config holds; reprovision sends the check-sync NOTIFY to the
    contact it registered (sipp answers), the phone fetches, and only then does the new password work."""
    peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN, location_db=True)
    home.inventory.write_text(kamailio_inventory(home.inventory.read_text(), k))
    notify = proc = srv = None
    try:
        srv = start_server(home)
        assert {"101", "102", "103"} <= set(k.rows())  # first sync: every device's active generation
        phone = Phone(MAC)
        assert phone.fetch(srv) == 200  # enrolment: the config carries the SIP credentials
        assert phone.registrar() == ("127.0.0.1", k.port)
        user, old = phone.line(1)
        assert user == "101" and registers(k, user, old)
        notify = NotifyPhone(tmp_path / "phone-sip")
        assert registers(k, user, old, contact_port=notify.port)  # the registrar learns where the phone listens

        proc = subprocess.Popen([*PROVISIONER, "--home", str(home.path), "--inventory", str(home.inventory),
                                 "reprovision", MAC, "--wait", "40", "--json"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        rc, events = notify.wait(timeout=20)
        assert rc == 0 and events == ["check-sync"], "the phone got the vendor's resync NOTIFY and answered 200"
        # rotating, not yet fetched: the old password still works, the pending one not yet
        rt = _store(home)
        pending = rt.store.credentials(MAC, "pending")["sip:101"]
        assert rt.store.device(MAC).state == "rotating"
        assert registers(k, user, old) and refused(k, user, pending)
        # the phone reacts to the NOTIFY: it fetches with the credentials it holds and gets the new config
        before = phone.hash
        assert phone.fetch(srv) == 200 and phone.hash != before
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        res = json.loads(out)
        assert res["new_config_fetched"] is True and res["generation"] == 2 and "200 OK" in res["notify"]
        user2, new = phone.line(1)
        assert user2 == "101" and new == pending and new != old
        assert refused(k, user, old) and registers(k, user, new)
        _, line2 = phone.line(2)
        assert registers(k, "102", line2)
        st = rt.store.device(MAC)
        assert st.state == "provisioned" and st.generation == 2 and st.served_hash == phone.hash
        r = home.cli("registrar", "list", "--json", check=True)
        acct = {a["username"]: a for a in json.loads(r.stdout)}
        assert acct["101"]["device"] == MAC and acct["101"]["held_generation"] == 2 and acct["101"]["in_sync"]
        assert acct["103"]["held_generation"] == 1 and acct["103"]["in_sync"]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        if notify:
            notify.stop()
        if srv:
            srv.stop()
        k.stop()


def test_inventory_changes_reach_the_registrar(home: Home, tmp_path):
    """A line added to a device gets its account; a removed line loses it; a device without a registrar
    mapping is left alone."""
    peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN)
    try:
        home.inventory.write_text(kamailio_inventory(home.inventory.read_text(), k))
        home.cli("devices", check=True)
        assert set(k.rows()) == {"101", "102", "103", "104w"}
        text = home.inventory.read_text()
        text = text.replace('      - {extension: "103", display_name: Alice Martin}\n',
                            '      - {extension: "103", display_name: Alice Martin}\n'
                            '      - {extension: "105", display_name: Alice 2}\n')
        text = text.replace('      - {extension: "102", display_name: Reception 2}\n', "")
        home.inventory.write_text(text)
        home.cli("devices", check=True)
        assert set(k.rows()) == {"101", "103", "104w", "105"}
        rt = _store(home)
        reg = KamailioRegistrar(f"sqlite:///{k.db}", str(k.db), DOMAIN)
        dev = rt.inventory.device("805ec0123457")
        from provisioner.registrar import line_secrets
        assert reg.holds(dev, line_secrets(rt.store.credentials(dev.mac, "active")))
        r = home.cli("registrar", "sync", "--json", check=True)
        assert json.loads(r.stdout) == []  # nothing left to repair
    finally:
        k.stop()


def test_bulk_reprovision_staggered(home: Home, tmp_path):
    """--site: every device of the site, started `--stagger` apart with at most `--concurrency` at once;
    a table (or JSON) per device; exit 4 when some did not fetch within --wait."""
    peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN)
    try:
        home.inventory.write_text(kamailio_inventory(home.inventory.read_text(), k))
        home.cli("devices", check=True)
        before = k.rows()
        r = home.cli("reprovision", "--site", "lab", "--stagger", "0.4", "--concurrency", "2", "--json",
                     env={"PROVISIONER_NOTIFY_TIMEOUT": "0.3"})
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert [x["mac"] for x in res] == ["805ec0123456", "805ec0123457", "805ec0123458"]
        assert all(x["generation"] == 2 and x["error"] is None and not x["new_config_fetched"] for x in res)
        assert k.rows() == before, "nothing switches at the registrar before the devices fetch"
        db = sqlite3.connect(home.path / "state.db")
        starts = [dt for (dt,) in db.execute("select at from audit_log where action='rotation.started' order by id")]
        from datetime import datetime
        times = [datetime.fromisoformat(str(t)) for t in starts]
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
        assert len(times) == 3 and min(gaps) >= 0.25, gaps
        r = home.cli("reprovision", "--all", "--wait", "0.5", "--stagger", "0", "--concurrency", "3",
                     env={"PROVISIONER_NOTIFY_TIMEOUT": "0.3"})
        assert r.returncode == 4
        assert "3 devices, 3 not done" in r.stdout and "not fetched in time" in r.stdout
        assert home.cli("reprovision", "--site", "nowhere").returncode == 2
        assert home.cli("reprovision", MAC, "--all").returncode == 2
    finally:
        k.stop()


def test_asterisk_through_the_pipeline(home: Home, tmp_path):
    """A site on Asterisk: the include file gets the new md5_cred exactly when the phone fetches."""
    need("curl")
    conf = tmp_path / "pbx" / "pjsip_provisioner.conf"
    text = home.inventory.read_text().replace(
        "    networks: [127.0.0.0/8, 192.168.50.0/24]\n",
        "    networks: [127.0.0.0/8, 192.168.50.0/24]\n"
        f"    registrar: {{kind: asterisk, host: pbx.example.net, domain: pbx.example.net, include_file: {conf}}}\n")
    home.inventory.write_text(text)
    srv = start_server(home)
    try:
        phone = Phone(MAC)
        assert phone.fetch(srv) == 200
        _, old = phone.line(1)
        assert f"md5_cred = {md5_cred('101', 'pbx.example.net', old)}" in conf.read_text()
        home.cli("reprovision", MAC, check=True, env={"PROVISIONER_NOTIFY_TIMEOUT": "0.3"})
        assert f"md5_cred = {md5_cred('101', 'pbx.example.net', old)}" in conf.read_text()
        assert phone.fetch(srv) == 200
        _, new = phone.line(1)
        assert new != old and f"md5_cred = {md5_cred('101', 'pbx.example.net', new)}" in conf.read_text()
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    finally:
        srv.stop()


def test_fritzbox_as_registrar(home: Home, tmp_path, monkeypatch):
    """Phones registering on a FRITZ!Box (its IP-phone clients over TR-064, the TR-064 test box): first
    sync, the switch at the phone's fetch, decommission; passwords to the box's rules."""
    need("curl")
    from tr064_box import TR064Box
    login_env, login = "TEST_FRITZ_REG_LOGIN", "Dedicated-Login-7710"
    box = TR064Box("8.02", users={"provisioner": login}, tls=False).start()
    srv = None
    try:
        from kamailio.peer import free_udp_port
        closed = free_udp_port()
        text = home.inventory.read_text().replace(
            "    networks: [127.0.0.0/8, 192.168.50.0/24]\n",
            "    networks: [127.0.0.0/8, 192.168.50.0/24]\n"
            "    registrar: {kind: fritzbox, router: '3c:a6:2f:11:22:33', host: 127.0.0.1, transport: udp}\n")
        text += f"""
routers:
  - mac: 3c:a6:2f:11:22:33
    profile: avm
    model: {box.model}
    site: lab
    address: 127.0.0.1
    management: {{user: provisioner, port: {box.port}, tls_port: {closed}, password_env: {login_env}}}
    lines: ["101", "102", "103"]
    options: {{client_username_prefix: "", poll_interval: 0.05, confirm_timeout: 1}}
"""
        home.inventory.write_text(text)
        monkeypatch.setenv(login_env, login)
        home.cli("devices", check=True)  # first sync: the box gets every phone's active SIP password
        rt = _store(home)

        def on_box() -> dict[str, Secret]:
            return {c["client_id"]: Secret(c["password"]) for c in box.clients}

        def sip(mac: str, ext: str, status: str = "active") -> Secret:
            return rt.store.credentials(mac, status)[f"sip:{ext}"]

        clients = on_box()
        assert set(clients) == {"provisioner-101", "provisioner-102", "provisioner-103"}
        assert clients["provisioner-101"] == sip(MAC, "101") and clients["provisioner-103"] == sip("805ec0123457", "103")
        assert all(len(s) == 20 and s.reveal().isalnum() for s in clients.values()), "the box's rules"
        # line 101's number is not one of the box's: left out of its incoming numbers, the phone still registers
        assert all(c["incoming"] == "" for c in box.clients)
        srv = start_server(home, env={login_env: login, "PROVISIONER_NOTIFY_TIMEOUT": "0.3"})
        phone = Phone(MAC)
        assert phone.fetch(srv) == 200
        home.cli("reprovision", MAC, check=True, env={"PROVISIONER_NOTIFY_TIMEOUT": "0.3"})
        assert on_box()["provisioner-101"] == sip(MAC, "101")  # not before the fetch
        assert phone.fetch(srv) == 200
        _, new = phone.line(1)
        assert on_box()["provisioner-101"] == new and on_box()["provisioner-103"] == sip("805ec0123457", "103")
        r = home.cli("registrar", "list", "--json", check=True)
        assert {a["username"]: a["held_generation"] for a in json.loads(r.stdout)} == {"101": 2, "102": 2, "103": 1}
        home.cli("decommission", MAC, check=True)
        assert set(on_box()) == {"provisioner-103"}
        assert not box.violations
    finally:
        if srv:
            srv.stop()
        box.stop()


def _refuse_writes(k, on: bool) -> None:
    """The registrar refuses every write (a trigger aborts them); Kamailio's reads go on as before."""
    with closing(sqlite3.connect(k.db, timeout=10)) as c, c:
        if on:
            for op in ("INSERT", "UPDATE", "DELETE"):
                c.execute(f"CREATE TRIGGER refuse_{op.lower()} BEFORE {op} ON subscriber "
                          f"BEGIN SELECT RAISE(ABORT, 'registrar in maintenance'); END")
        else:
            for op in ("insert", "update", "delete"):
                c.execute(f"DROP TRIGGER refuse_{op}")


def test_registrar_down_the_phone_keeps_what_works(home: Home, tmp_path):
    """The registrar cannot take the new passwords at the phone's fetch: the phone gets its current config
    again (and registers with it); once the registrar is back, the next fetch switches. A revoke whose
    registrar write fails exits 1 and `registrar sync` finishes it."""
    peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN)
    home.inventory.write_text(kamailio_inventory(home.inventory.read_text(), k))
    srv = None
    try:
        srv = start_server(home)
        phone = Phone(MAC)
        assert phone.fetch(srv) == 200
        _, old = phone.line(1)
        home.cli("reprovision", MAC, check=True, env={"PROVISIONER_NOTIFY_TIMEOUT": "0.3"})
        held = phone.hash
        _refuse_writes(k, True)
        assert phone.fetch(srv) == 200 and phone.hash == held, "the current config again, not the new one"
        assert registers(k, "101", old)
        _refuse_writes(k, False)
        assert phone.fetch(srv) == 200 and phone.hash != held
        _, new = phone.line(1)
        assert registers(k, "101", new) and refused(k, "101", old)

        _refuse_writes(k, True)
        r = home.cli("credentials", "revoke", MAC, env={"PROVISIONER_NOTIFY_TIMEOUT": "0.3"})
        assert r.returncode == 1 and "registrar in maintenance" in r.stderr and "registrar sync" in r.stderr
        assert registers(k, "101", new)  # not yet locked out at the registrar...
        assert home.cli("registrar", "sync").returncode == 1
        _refuse_writes(k, False)
        r = home.cli("registrar", "sync", "--json", check=True)
        assert [(x["mac"], x["action"]) for x in json.loads(r.stdout)] == [(MAC, "written")]
        assert refused(k, "101", new)  # ...and now it is
    finally:
        if srv:
            srv.stop()
        k.stop()


def test_site_networks_become_the_registrars_access_list(home: Home, tmp_path):
    """`registrar sync` writes the site's networks to Kamailio's permissions table and reloads it: a
    REGISTER with the right password from outside the site's networks is refused; rows that another
    tool keeps in the same table are left alone."""
    peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN, acl=True)
    reload = ["kamcmd", "-s", f"unix:{k.dir / 'ctl.sock'}", "permissions.addressReload"]
    try:
        home.inventory.write_text(kamailio_inventory(home.inventory.read_text(), k,
                                                     extra=f", reload_command: {json.dumps(reload)}"))
        r = home.cli("registrar", "sync", check=True)
        assert "exported (127.0.0.0/8, 192.168.50.0/24; sites lab)" in r.stderr

        def acl_rows():
            with closing(sqlite3.connect(k.db)) as c:
                return set(c.execute("SELECT grp, ip_addr, mask, tag FROM address"))
        assert acl_rows() == {(1, "127.0.0.0", 8, "provisioner:lab"), (1, "192.168.50.0", 24, "provisioner:lab")}
        sip = _store(home).store.credentials(MAC)["sip:101"]
        assert registers(k, "101", sip)

        with closing(sqlite3.connect(k.db)) as c, c:
            c.execute("INSERT INTO address (grp, ip_addr, mask, port, tag) VALUES (2, '10.99.0.0', 16, 0, 'office')")
        # the site's phones now live in 10.20.0.0/16 only: this source is outside it
        home.inventory.write_text(home.inventory.read_text().replace(
            "networks: [127.0.0.0/8, 192.168.50.0/24]", "networks: [10.20.0.0/16]"))
        r = home.cli("registrar", "sync", check=True)
        assert "exported (10.20.0.0/16; sites lab)" in r.stderr
        assert acl_rows() == {(1, "10.20.0.0", 16, "provisioner:lab"), (2, "10.99.0.0", 16, "office")}
        assert forbidden(k, "101", sip)  # 403 at once: the password is not even looked at
        assert "outside the sites' networks" in (k.dir / "kamailio.log").read_text()
        assert "unchanged" in home.cli("registrar", "sync", check=True).stderr
    finally:
        k.stop()


def test_asterisk_access_list_permits_only_site_contacts(tmp_path):
    reg = AsteriskRegistrar(tmp_path / "pjsip_provisioner.conf", DOMAIN)
    assert reg.set_acl({"lab": ["192.168.50.0/24", "127.0.0.0/8"], "shop": ["10.1.0.0/16"]}) is True
    text = (tmp_path / "pjsip_provisioner.conf").read_text()
    section = text[text.index("[provisioner-site-networks]"):]
    assert "type = acl\ncontact_deny = 0.0.0.0/0.0.0.0\n" in section
    assert [ln for ln in section.splitlines() if ln.startswith("contact_permit")] == [
        "contact_permit = 10.1.0.0/255.255.0.0", "contact_permit = 127.0.0.0/255.0.0.0",
        "contact_permit = 192.168.50.0/255.255.255.0"]
    assert reg.set_acl({"lab": ["127.0.0.0/8", "192.168.50.0/24"], "shop": ["10.1.0.0/16"]}) is False
    assert reg.list() == []  # the access list is not an account
