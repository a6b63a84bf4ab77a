"""Crash a rotation at each of its steps (SIGKILL-like: os._exit at a named point), restart, and check that
registrar, store and the config the phone holds agree, and that the phone registers at a real Kamailio.

Kill points (PROVISIONER_TEST_KILL_AT):
  reprovision.staged     CLI: pending generation committed, before the resync NOTIFY
  reprovision.notified   CLI: after the NOTIFY, before --wait
  switch.intent          serve: write-ahead intent committed, registrar not yet written
  switch.registrar       serve: registrar holds the pending passwords, the record not yet updated
  switch.done            serve: registrar switched and recorded, before the fetch is marked served
  serve.before_promote   serve: pending config marked served, not promoted, reply not sent (crash_cli.py)
  serve.after_promote    serve: promoted, reply not sent: the one window left (see the test)
  sync.registrar         serve start-up reconcile: registrar written back, the record not yet updated
  revoke.store / reset.store / decommission.store
                         CLI: store changed (with the registrar intent), registrar not yet written
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import Home, poll
from kamailio.peer import Phone, kamailio_inventory, need_peers, refused, registers, start_kamailio, start_serve
from provisioner.registrar import line_secrets
from provisioner.registrar.kamailio import KamailioRegistrar
from provisioner.registrar.sync import status
from provisioner.runtime import Runtime

MAC = "805ec0123456"
DOMAIN = "prov.test"
QUICK = {"PROVISIONER_NOTIFY_TIMEOUT": "0.3"}  # nothing answers NOTIFY in these tests


@pytest.fixture
def rig(home: Home, tmp_path):
    need_peers()
    k = start_kamailio(tmp_path / "kamailio", DOMAIN)
    home.inventory.write_text(kamailio_inventory(home.inventory.read_text(), k))
    servers = []

    def serve(point: str | None = None, crash_launcher: bool = False):
        env = {"PROVISIONER_TEST_KILL_AT": point} if point else {}
        srv, rc = start_serve(home, env, crash_launcher)
        if srv is not None:
            servers.append(srv)
        return srv, rc

    yield k, serve
    for s in servers:
        s.stop()
    k.stop()


def runtime(home: Home) -> Runtime:
    return Runtime(home=home.path, inventory_path=home.inventory, state_url=os.environ.get("PROVISIONER_STATE"))


def agree(home: Home, k, phone: Phone, generation: int) -> None:
    """Registrar, store and the phone's config hold the same generation; the phone registers with it."""
    rt = runtime(home)
    st = rt.store.device(MAC)
    active = rt.store.credentials(MAC, "active")
    dev = rt.inventory.device(MAC)
    assert st.generation == generation
    assert st.served_hash == phone.hash, "the store knows which config the phone holds"
    _, pw = phone.line(1)
    assert pw == active["sip:101"], "the phone holds the active generation"
    reg = KamailioRegistrar(f"sqlite:///{k.db}", str(k.db), DOMAIN)
    assert reg.holds(dev, line_secrets(active)), "the registrar holds the active generation"
    rec = status(rt, MAC)
    assert rec["held_generation"] == generation and rec["write_in_flight"] is None
    assert registers(k, "101", pw)


def enrolled(serve) -> tuple[object, Phone]:
    srv, _ = serve()
    phone = Phone(MAC)
    assert phone.fetch(srv) == 200
    return srv, phone


@pytest.mark.parametrize("point,launcher", [("switch.intent", False), ("switch.registrar", False),
                                            ("switch.done", False), ("serve.before_promote", True)])
def test_serve_killed_during_the_switch(rig, home: Home, point, launcher):
    k, serve = rig
    srv, rc = serve(point, launcher)
    phone = Phone(MAC)
    assert phone.fetch(srv) == 200  # enrolment: no switch yet
    agree(home, k, phone, 1)
    home.cli("reprovision", MAC, check=True, env=QUICK)
    old_cfg = phone.hash
    assert phone.fetch(srv) == 0, "the server died while it served the new config"
    assert srv.proc.wait(timeout=10) == 137
    assert phone.hash == old_cfg

    srv, _ = serve()  # restart: the start-up reconcile repairs the switch
    agree(home, k, phone, 1)
    _, old = phone.line(1)
    # the rotation resumes: the phone's next fetch (with what it holds) switches everything together
    assert phone.fetch(srv) == 200 and phone.hash != old_cfg
    agree(home, k, phone, 2)
    assert refused(k, "101", old)
    if point == "serve.before_promote":
        db = runtime(home).store
        assert "rotation.interrupted" in [e["action"] for e in db.audit_entries(MAC)]


def test_serve_killed_before_promote_on_postgresql(rig, home: Home, pg_cluster, monkeypatch):
    """The same crash with the store on PostgreSQL (replicas): row locks instead of SQLite's write lock."""
    monkeypatch.setenv("PROVISIONER_STATE", pg_cluster.new_database())
    test_serve_killed_during_the_switch(rig, home, "serve.before_promote", True)


def test_start_up_reconcile_killed_too(rig, home: Home):
    """Killed in the switch, then killed again while the restart repairs it: the next start finishes."""
    k, serve = rig
    srv, phone = enrolled(lambda: serve("switch.registrar"))
    home.cli("reprovision", MAC, check=True, env=QUICK)
    assert phone.fetch(srv) == 0 and srv.proc.wait(timeout=10) == 137
    srv, rc = serve("sync.registrar")
    assert srv is None and rc == 137, "died in the start-up reconcile, after the registrar write"
    srv, _ = serve()
    agree(home, k, phone, 1)
    assert phone.fetch(srv) == 200
    agree(home, k, phone, 2)


@pytest.mark.parametrize("point", ["reprovision.staged", "reprovision.notified"])
def test_reprovision_killed(rig, home: Home, point):
    k, serve = rig
    srv, phone = enrolled(serve)
    r = home.cli("reprovision", MAC, "--wait", "30", env={**QUICK, "PROVISIONER_TEST_KILL_AT": point})
    assert r.returncode == 137
    agree(home, k, phone, 1)  # pending staged, nothing switched: the phone works as before
    # run again: a rotation whose switch never began is replaced, and completes at the fetch
    r = home.cli("reprovision", MAC, "--json", check=True, env=QUICK)
    assert json.loads(r.stdout)["generation"] == 3
    assert phone.fetch(srv) == 200
    agree(home, k, phone, 3)


def test_reply_lost_after_the_switch_recovers_by_revoke(rig, home: Home):
    """The one window no server can close: promoted, then the reply is lost (here: killed before sending).
    Registrar and store agree on the new generation, the phone still holds the old config; the helpdesk's
    `credentials revoke` pushes it to enrol again, after which it registers."""
    k, serve = rig
    srv, phone = enrolled(lambda: serve("serve.after_promote", True))
    home.cli("reprovision", MAC, check=True, env=QUICK)
    assert phone.fetch(srv) == 0 and srv.proc.wait(timeout=10) == 137
    srv, _ = serve()
    rt = runtime(home)
    assert rt.store.device(MAC).generation == 2 and status(rt, MAC)["held_generation"] == 2
    _, old = phone.line(1)
    assert refused(k, "101", old) and phone.fetch(srv) == 401
    home.cli("credentials", "revoke", MAC, check=True, env=QUICK)
    # its first, anonymous request enrols it again (once the server's cached row of the device is over)
    assert poll(lambda: phone.fetch(srv, anonymous=True), lambda s: s == 200, every=0.3) == 200
    agree(home, k, phone, 3)


@pytest.mark.parametrize("point,cmd", [("revoke.store", ("credentials", "revoke", MAC)),
                                       ("reset.store", ("reset", MAC))])
def test_revoke_and_reset_killed_before_the_registrar(rig, home: Home, point, cmd):
    k, serve = rig
    srv, phone = enrolled(serve)
    _, old = phone.line(1)
    assert home.cli(*cmd, env={**QUICK, "PROVISIONER_TEST_KILL_AT": point}).returncode == 137
    # the store rotated; the registrar write was cut short (its intent is recorded)
    rt = runtime(home)
    assert status(rt, MAC)["write_in_flight"] == "set" and registers(k, "101", old)
    r = home.cli("registrar", "sync", "--json", check=True)
    assert [x["action"] for x in json.loads(r.stdout)] == ["written"]
    assert refused(k, "101", old), "the old password is locked out of the registrar too"
    assert poll(lambda: phone.fetch(srv, anonymous=True), lambda s: s == 200, every=0.3) == 200  # re-enrols
    agree(home, k, phone, 2)


def test_decommission_killed_before_the_registrar(rig, home: Home):
    k, serve = rig
    srv, phone = enrolled(serve)
    _, pw = phone.line(1)
    r = home.cli("decommission", MAC, env={"PROVISIONER_TEST_KILL_AT": "decommission.store"})
    assert r.returncode == 137 and registers(k, "101", pw)
    srv.stop()
    srv, _ = serve()  # the start-up reconcile finishes the removal
    assert set(k.rows()) == {"103", "104w"}
    assert refused(k, "101", pw)
    rt = runtime(home)
    assert status(rt, MAC)["held_generation"] is None and rt.store.device(MAC).state == "decommissioned"
    assert phone.fetch(srv) == 401
