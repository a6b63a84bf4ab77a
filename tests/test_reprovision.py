"""Two-phase rotation: every secret changes; old provisioning credentials work until the new config is fetched."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time

from conftest import PROVISIONER, REPO, Home, Server, kv, ua_for

MAC = "805ec0123456"
FILE = f"{MAC}.cfg"
UA = ua_for(MAC)


def secrets_of(body: bytes) -> dict[str, str]:
    cfg = kv(body)
    out = {k: v[0] for k, v in cfg.items() if k.endswith(".password") or k == "static.auto_provision.server.password"}
    for i, v in enumerate(cfg["static.security.user_password"]):
        out[f"web{i}"] = v.split(":", 1)[1]
    return out


def state(home: Home) -> dict:
    r = home.cli("devices", "--json", check=True)
    return next(d for d in json.loads(r.stdout) if d["mac"] == MAC)


def test_reprovision_rotates_everything_two_phase(server: Server, home: Home):
    status, old_cfg = server.curl(FILE, UA)
    assert status == 200
    old = secrets_of(old_cfg)
    old_pw = old["static.auto_provision.server.password"]
    assert len(old) == 5  # 2 SIP lines, admin, user, provisioning

    r = home.cli("reprovision", MAC, "--json", check=True)
    res = json.loads(r.stdout)
    assert res["generation"] == 2 and res["new_config_fetched"] is False
    st = state(home)
    assert st["state"] == "rotating" and st["pending_hash"] and not st["in_sync"]

    # the device fetches with its old credentials and gets the new config
    status, new_cfg = server.curl(FILE, UA, user=MAC, password=old_pw)
    assert status == 200 and new_cfg != old_cfg
    new = secrets_of(new_cfg)
    assert new.keys() == old.keys()
    assert all(new[k] != old[k] for k in old), "every secret must change"
    assert not set(new.values()) & set(old.values())

    # now the old credentials are retired, the new ones work
    assert server.curl(FILE, UA, user=MAC, password=old_pw)[0] == 401
    status, again = server.curl(FILE, UA, user=MAC, password=new["static.auto_provision.server.password"])
    assert status == 200 and again == new_cfg
    st = state(home)
    assert st["state"] == "provisioned" and st["in_sync"] and st["pending_hash"] is None

    db = sqlite3.connect(home.path / "state.db")
    rows = dict(db.execute("select generation, group_concat(distinct status) from credentials where mac=? "
                           "group by generation", (MAC,)).fetchall())
    assert rows == {1: "retired", 2: "active"}
    actions = [a for (a,) in db.execute("select action from audit_log where target=? order by id", (MAC,))]
    assert actions[-2:] == ["rotation.started", "rotation.confirmed"]


def test_old_credentials_keep_working_until_the_fetch(server: Server, home: Home):
    status, cfg = server.curl(FILE, UA)
    pw = kv(cfg)["static.auto_provision.server.password"][0]
    home.cli("reprovision", MAC, check=True)
    home.cli("reprovision", MAC, check=True)  # a second rotation replaces the pending one
    # nothing fetched yet: the device can still fetch with what it has
    status, new_cfg = server.curl(FILE, UA, user=MAC, password=pw)
    assert status == 200
    db = sqlite3.connect(home.path / "state.db")
    rows = dict(db.execute("select generation, group_concat(distinct status) from credentials where mac=? "
                           "group by generation", (MAC,)).fetchall())
    assert rows == {1: "retired", 2: "discarded", 3: "active"}


def test_wait_exits_4_when_the_device_does_not_fetch(server: Server, home: Home):
    server.curl(FILE, UA)
    r = home.cli("reprovision", MAC, "--wait", "1")
    assert r.returncode == 4 and "did not fetch its new config within 1 s" in r.stderr


def test_wait_returns_when_the_device_fetches(server: Server, home: Home):
    status, cfg = server.curl(FILE, UA)
    pw = kv(cfg)["static.auto_provision.server.password"][0]
    proc = subprocess.Popen([*PROVISIONER, "--home", str(home.path), "--inventory", str(home.inventory),
                             "reprovision", MAC, "--wait", "30", "--json"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    fetched = False
    while time.monotonic() < deadline and not fetched:  # the "phone" resyncs until it sees a new config
        time.sleep(0.5)
        status, body = server.curl(FILE, UA, user=MAC, password=pw)
        fetched = status == 200 and body != cfg
    out, err = proc.communicate(timeout=30)
    assert fetched and proc.returncode == 0, err
    assert json.loads(out)["new_config_fetched"] is True


def test_reprovision_unknown_device_exits_2(home: Home):
    r = home.cli("reprovision", "80:5e:c0:99:99:99")
    assert r.returncode == 2 and "no device 805ec0999999" in r.stderr
    r = home.cli("reprovision", "not-a-mac")
    assert r.returncode == 2 and "not a MAC" in r.stderr
