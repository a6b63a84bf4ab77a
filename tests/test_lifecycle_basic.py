"""reset, revoke, decommission, unlock, and revealing secrets with a second factor."""

from __future__ import annotations

import json
import subprocess
import sqlite3
import time
from urllib.parse import parse_qs, urlparse

import pyotp

from conftest import PROVISIONER, REPO, Home, Server, kv, start_server, ua_for

MAC = "805ec0123456"
FILE = f"{MAC}.cfg"
UA = ua_for(MAC)


def password(cfg: bytes) -> str:
    return kv(cfg)["static.auto_provision.server.password"][0]


def state(home: Home) -> str:
    return next(d for d in json.loads(home.cli("devices", "--json", check=True).stdout) if d["mac"] == MAC)["state"]


def fetch_until(srv: Server, expect: int, **kw) -> tuple[int, bytes]:
    """The server reuses a device's row for up to a second: retry briefly (bounded) after a CLI change."""
    deadline = time.monotonic() + 5
    while True:
        status, body = srv.curl(FILE, UA, **kw)
        if status == expect or time.monotonic() > deadline:
            return status, body
        time.sleep(0.3)


def test_reset_rotates_and_reopens_enrolment(server: Server, home: Home):
    status, cfg = server.curl(FILE, UA)
    old = password(cfg)
    r = home.cli("reset", MAC, "--json", check=True)
    res = json.loads(r.stdout)
    assert res["state"] == "reset-pending" and res["manual"] is True and "OK key" in res["instructions"]
    assert state(home) == "reset-pending"
    # the factory-fresh phone's first fetch enrols it again, with new secrets
    # (curl, like a phone, asks anonymously first: the server may reuse the old row for up to a second)
    deadline = time.monotonic() + 5
    while True:
        status, cfg2 = server.curl(FILE, UA)
        if (status == 200 and password(cfg2) != old) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert status == 200 and password(cfg2) != old
    assert kv(cfg2)["account.1.password"] != kv(cfg)["account.1.password"]
    assert state(home) == "provisioned"
    assert server.curl(FILE, UA, user=MAC, password=old)[0] == 401  # the old credentials are retired
    assert server.curl(FILE, UA, user=MAC, password=password(cfg2))[0] == 200


def test_revoke_refuses_old_credentials_at_once(server: Server, home: Home):
    status, cfg = server.curl(FILE, UA)
    old = password(cfg)
    home.cli("credentials", "revoke", MAC, check=True)
    assert state(home) == "enrolling"
    db = sqlite3.connect(home.path / "state.db")
    assert dict(db.execute("select generation, group_concat(distinct status) from credentials where mac=? "
                           "group by generation", (MAC,)).fetchall()) == {1: "retired", 2: "active"}
    status, cfg2 = fetch_until(server, 200)  # re-enrolment hands out the new ones
    assert status == 200 and password(cfg2) != old
    assert server.curl(FILE, UA, user=MAC, password=old)[0] == 401


def test_decommission_refuses_the_device(server: Server, home: Home):
    status, cfg = server.curl(FILE, UA)
    home.cli("decommission", MAC, check=True)
    assert fetch_until(server, 401, user=MAC, password=password(cfg))[0] == 401
    assert server.curl(FILE, UA)[0] == 401
    assert state(home) == "decommissioned"
    db = sqlite3.connect(home.path / "state.db")
    assert db.execute("select count(*) from credentials where mac=? and status != 'retired'", (MAC,)).fetchone()[0] == 0


def test_unlock_after_a_lock(home: Home):
    text = home.inventory.read_text().replace("networks: [127.0.0.0/8, 192.168.50.0/24]", "networks: [127.0.0.0/24]")
    home.inventory.write_text(text)
    srv = start_server(home)
    try:
        status, cfg = srv.curl(FILE, UA)
        pw = password(cfg)
        srv.curl(FILE, UA, user=MAC, password=pw, extra=("--interface", "127.0.1.9"))  # from outside: lock
        assert state(home) == "locked"
        assert home.cli("unlock", "805ec0123457").returncode == 2  # not locked
        home.cli("unlock", MAC, check=True)
        assert fetch_until(srv, 200, user=MAC, password=pw)[0] == 200
    finally:
        srv.stop()


def test_reveal_needs_a_fresh_one_time_code(home: Home):
    home.cli("devices", check=True)
    enroll = subprocess.run([*PROVISIONER, "--home", str(home.path), "--inventory", str(home.inventory), "otp",
                             "enroll", "--operator", "hana"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert enroll.returncode == 0
    seed = parse_qs(urlparse(enroll.stdout.strip()).query)["secret"][0]

    def reveal(code) -> tuple[int, dict | None]:
        """(exit code, revealed credentials); run apart from home.cli, whose output the leak scan reads,
        and never returning the raw output, so that a failing assertion cannot print a secret."""
        r = subprocess.run([*PROVISIONER, "--home", str(home.path), "--inventory", str(home.inventory),
                            "credentials", "reveal", MAC, "--operator", "hana", "--otp", code, "--json"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
        return r.returncode, (json.loads(r.stdout)["credentials"] if r.returncode == 0 else None)

    totp = pyotp.TOTP(seed)
    wrong = "000000" if totp.now() != "000000" else "111111"
    assert reveal(wrong)[0] == 5
    code = totp.now()
    rc, creds = reveal(code)
    if rc == 5:  # the 30 s step turned between reading the code and checking it: once more
        time.sleep(1)
        code = totp.now()
        rc, creds = reveal(code)
    assert rc == 0
    assert set(creds) == {"provisioning", "admin", "user", "sip:101", "sip:102"}
    assert reveal(code)[0] == 5  # the same code cannot be used twice
    r = home.cli("credentials", "reveal", "805ec0123457", "--operator", "nobody", "--otp", "123456")
    assert r.returncode == 5 and "no second factor enrolled" in r.stderr
    db = sqlite3.connect(home.path / "state.db")
    (details,) = db.execute("select details from audit_log where action='credentials.revealed'").fetchone()
    assert "sip:101" in details and not any(v in details for v in creds.values())
