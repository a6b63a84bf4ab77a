"""A registrar that cannot be written is a failure everywhere, and what it really holds is what `check`,
`devices`, `explain`, `audit` and `registrar list` say (real Kamailio, sipp REGISTERs, curl as the phone).

- Kamailio running on a database that does not exist: check exits 1, adopt refuses and changes nothing,
  registrar list exits 1, devices/explain/audit show the devices as not held, the phone's enrolment is
  not answered with SIP passwords the registrar does not take (503, the window stays open) unless the
  inventory says `serve_unsynced`; once the schema exists, `registrar sync` and the phone's next fetch
  make it register.
- A changed `domain`: the account under the old domain stays only while the phone may still use it,
  then it goes (the retired password no longer registers there); audit reports it in between.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

from conftest import Home, poll, start_server, ua_for
from kamailio.peer import Phone, create_db, kamailio_inventory, need_peers, refused, registers, start_kamailio
from provisioner.runtime import Runtime

MAC = "805ec0123456"
DOMAIN = "prov.test"


def rows_of(home: Home, *args: str) -> tuple[int, object, str]:
    r = home.cli(*args, env={"PROVISIONER_NOTIFY_TIMEOUT": "0.3"})
    try:
        data = json.loads(r.stdout) if r.stdout.strip().startswith(("[", "{")) else r.stdout
    except json.JSONDecodeError:
        data = r.stdout
    return r.returncode, data, r.stderr


def registrar_findings(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["type"] in ("registrar", "orphan")]


def reasons(home: Home, mac: str) -> list[str]:
    with closing(sqlite3.connect(home.path / "state.db")) as c:
        return [r for (r,) in c.execute("select reason from fetch_events where mac = ? order by id", (mac,))]


def test_registrar_without_its_database(home: Home, tmp_path):
    need_peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN, with_schema=False)
    srv = None
    try:
        home.inventory.write_text(kamailio_inventory(home.inventory.read_text(), k))
        # check: the files are fine, the registrar is not: exit 1, and it says which and why
        rc, out, err = rows_of(home, "check")
        assert rc == 1 and "no subscriber table" in err and "registrar sync" in err, err
        assert home.cli("check", "--offline").returncode == 0
        # adopt: refused before anything is written
        before = home.inventory.read_bytes()
        rc, out, err = rows_of(home, "adopt", "80:5e:c0:aa:bb:01", "--vendor", "yealink", "--model", "T46S",
                               "--site", "lab", "--line", "150")
        assert rc == 1 and "nothing was changed" in err and "no subscriber table" in err, err
        assert home.inventory.read_bytes() == before
        # registrar list: 0 accounts is not the answer, the registrar could not be read
        rc, rows, err = rows_of(home, "registrar", "list", "--json")
        assert rc == 1 and "no subscriber table" in err
        assert {r["status"] for r in rows} <= {"missing"}
        # devices, explain, audit: nobody is held
        rc, devs, err = rows_of(home, "devices", "--json")
        assert rc == 0 and {d["registrar"] for d in devs} == {"unreachable"} and not any(d["in_sync"] for d in devs)
        assert "registrar sync" in err
        rc, ex, _ = rows_of(home, "explain", MAC, "--json")
        assert ex["state"]["registrar"]["status"] == "unreachable"
        assert any("registrar sync" in line for line in ex["conclusion"])
        rc, report, _ = rows_of(home, "audit", "--json", "-")
        assert rc == 3 and any(f["type"] == "registrar" and "could not be read" in f["what"]
                               for f in registrar_findings(report))

        # the phone: no config with passwords no registrar takes; the window stays open for later
        srv = start_server(home)
        phone = Phone(MAC)
        assert phone.fetch(srv) == 503 and phone.cfg is None
        assert poll(lambda: reasons(home, MAC), bool)[-1].startswith("registrar does not hold the SIP passwords")
        rt = Runtime(home=home.path, inventory_path=home.inventory)
        assert rt.store.device(MAC).state == "enrolling"
        # unless the operator chose so, for this one device
        other = Phone("805ec0123457", "T41P")
        assert other.fetch(srv) == 503
        text = home.inventory.read_text().replace(
            "    model: T41P\n    site: lab\n", "    model: T41P\n    site: lab\n    registrar: {serve_unsynced: true}\n")
        home.inventory.write_text(text)
        assert poll(lambda: other.fetch(srv), lambda s: s == 200, timeout=15) == 200
        rc, devs, _ = rows_of(home, "devices", "--json")
        assert {d["mac"]: d["registrar"] for d in devs}["805ec0123457"] == "unreachable"

        # the operator creates Kamailio's schema: check passes, sync writes, the phone enrols and registers
        create_db(k.db)
        rc, out, err = rows_of(home, "check")
        assert rc == 0 and "subscriber table of domain prov.test writable" in out, err
        rc, repairs, err = rows_of(home, "registrar", "sync", "--json")
        assert rc == 0, err
        assert {(r["mac"], r["action"]) for r in repairs} >= {(MAC, "written"), ("805ec0123457", "written")}
        assert phone.fetch(srv) == 200
        user, pw = phone.line(1)
        assert registers(k, user, pw)
        _, pw_other = other.line(1)
        assert registers(k, "103", pw_other)  # what it was handed unsynced is what the registrar got
        rc, devs, _ = rows_of(home, "devices", "--json")
        assert {d["registrar"] for d in devs} == {"held"}
        assert {d["mac"]: d["in_sync"] for d in devs}[MAC] is True
        rc, ex, _ = rows_of(home, "explain", MAC, "--json")
        assert ex["state"]["registrar"]["status"] == "held"
        rc, report, _ = rows_of(home, "audit", "--json", "-")
        assert registrar_findings(report) == []
        rc, rows, _ = rows_of(home, "registrar", "list", "--json")
        assert rc == 0 and {r["status"] for r in rows} == {"held"}

        # someone changes the account behind provisioner's back: every view says so
        with closing(sqlite3.connect(k.db)) as c, c:
            c.execute("UPDATE subscriber SET ha1 = 'x', ha1b = 'y' WHERE username = '101'")
        assert refused(k, user, pw)
        rc, devs, _ = rows_of(home, "devices", "--json")
        assert {d["mac"]: d["registrar"] for d in devs}[MAC] == "not held"
        rc, report, _ = rows_of(home, "audit", "--json", "-")
        assert [(f["type"], f["device"]) for f in registrar_findings(report)] == [("registrar", MAC)]
    finally:
        if srv:
            srv.stop()
        k.stop()


def test_a_changed_domain_retires_the_old_account(home: Home, tmp_path):
    """The site's registrar domain changes while serving. An account under the old domain goes as soon as
    no config the devices hold can use it: after the device's next fetch of the config that uses the new
    domain (audit reports it as an orphan then, `registrar sync` removes it). The retired password of a
    reprovisioned phone registers under neither domain."""
    need_peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN)
    srv = None
    env = {"PROVISIONER_NOTIFY_TIMEOUT": "0.3"}
    try:
        home.inventory.write_text(kamailio_inventory(home.inventory.read_text(), k))
        srv = start_server(home)
        phone, other = Phone(MAC), Phone("805ec0123457", "T41P")
        assert phone.fetch(srv) == 200 and other.fetch(srv) == 200
        _, old = phone.line(1)
        _, other_old = other.line(1)
        assert registers(k, "101", old)

        # one edit: the domain, and the display name on the other phone. Every family's config carries the
        # domain (registered as user@domain at the host), so both configs change: each phone keeps its old
        # domain's account until it has fetched the config that uses the new one
        home.inventory.write_text(home.inventory.read_text().replace(f"domain: {DOMAIN}", "domain: new.test")
                                  .replace("display_name: Alice Martin", "display_name: Alice Dupont"))
        assert poll(lambda: registers(k, "101", old, domain="new.test"), bool, timeout=15)
        assert registers(k, "101", old), "the phone still holds the config that uses the old domain's account"
        assert registers(k, "103", other_old), "the other phone still holds the config that uses it"
        rc, report, _ = rows_of(home, "audit", "--json", "-")
        assert [f for f in registrar_findings(report) if f["type"] == "orphan"] == []

        home.cli("reprovision", MAC, check=True, env=env)
        assert phone.fetch(srv) == 200
        _, new = phone.line(1)
        assert new != old and registers(k, "101", new, domain="new.test")
        assert refused(k, "101", old) and refused(k, "101", old, domain="new.test")

        # the other phone fetches the config of the new settings (same generation): its old-domain account
        # is an orphan now, which audit reports and sync removes
        assert poll(lambda: other.fetch(srv), lambda s: s == 200) == 200
        assert registers(k, "103", other_old, domain="new.test")
        rc, report, _ = rows_of(home, "audit", "--json", "-")
        orphans = [(f["device"], f["what"]) for f in registrar_findings(report) if f["type"] == "orphan"]
        assert orphans == [("805ec0123457", f"registrar account 103@{DOMAIN} written by provisioner is owned by "
                                            f"no device")]
        rc, rows, _ = rows_of(home, "registrar", "list", "--json")
        assert {(r["username"], r["domain"]): r["status"] for r in rows if r["domain"] == DOMAIN} == {
            ("103", DOMAIN): "orphaned"}
        rc, repairs, err = rows_of(home, "registrar", "sync", "--json")
        assert rc == 0, err
        assert [(r["mac"], r["action"], r["detail"].split(" at ")[0]) for r in repairs] == [
            ("805ec0123457", "removed", f"orphaned account 103@{DOMAIN}")]
        assert refused(k, "103", other_old) and registers(k, "103", other_old, domain="new.test")
        rc, report, _ = rows_of(home, "audit", "--json", "-")
        assert registrar_findings(report) == []
        assert {r["domain"] for r in rows_of(home, "registrar", "list", "--json")[1]} == {"new.test"}
        # an account another tool wrote in the domain is reported, never removed
        with closing(sqlite3.connect(k.db)) as c, c:
            c.execute("INSERT INTO subscriber (username, domain, ha1, ha1b) VALUES ('999', 'new.test', 'a', 'b')")
        rc, report, _ = rows_of(home, "audit", "--json", "-")
        assert [f["what"] for f in registrar_findings(report)] == ["registrar account 999@new.test is in no inventory line"]
        home.cli("registrar", "sync", check=True)
        with closing(sqlite3.connect(k.db)) as c:
            assert "999" in {u for (u,) in c.execute("select username from subscriber")}
    finally:
        if srv:
            srv.stop()
        k.stop()


def test_enrolment_waits_for_the_registrar_then_goes_through(home: Home, tmp_path):
    """A registrar refusing writes at the very fetch: 503 and the window stays open; back, the same fetch
    enrols (the phone's retry)."""
    need_peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN)
    srv = None
    try:
        home.inventory.write_text(kamailio_inventory(home.inventory.read_text(), k))
        home.cli("devices", check=True)  # first sync: every account written
        with closing(sqlite3.connect(k.db)) as c, c:  # then the accounts are lost, and writes refused
            c.execute("DELETE FROM subscriber")
            c.execute("CREATE TRIGGER refuse BEFORE INSERT ON subscriber BEGIN SELECT RAISE(ABORT, 'maintenance'); END")
        # the record still says written: the server trusts it, but `devices` asks the registrar
        rc, devs, _ = rows_of(home, "devices", "--json")
        assert {d["registrar"] for d in devs} == {"not held"}
        # a reset reopens the enrolment (a new generation the registrar must get first)
        assert home.cli("reset", MAC, env={"PROVISIONER_NOTIFY_TIMEOUT": "0.3"}).returncode == 1
        srv = start_server(home)
        phone = Phone(MAC)
        assert phone.fetch(srv) == 503
        with closing(sqlite3.connect(k.db)) as c, c:
            c.execute("DROP TRIGGER refuse")
        assert phone.fetch(srv) == 200  # written at this fetch, before the config went out
        user, pw = phone.line(1)
        assert registers(k, user, pw)
        assert srv.curl(f"{MAC}.cfg", ua_for(MAC))[0] == 401  # the window was used by that fetch only
    finally:
        if srv:
            srv.stop()
        k.stop()
