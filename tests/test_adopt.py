"""adopt: writes inventory.yaml keeping comments, generates credentials, opens the window; refuses twice."""

from __future__ import annotations

import json

from conftest import Home, poll, start_server, ua_for


def test_adopt_keeps_comments_and_opens_enrolment(home: Home):
    before = home.inventory.read_text()
    r = home.cli("adopt", "80:5E:C0:AA:BB:CC", "--vendor", "yealink", "--model", "T46S", "--site", "lab",
                 "--line", "110:Front Desk", "--line", "111")
    assert r.returncode == 0, r.stderr
    assert "adopted 805ec0aabbcc" in r.stdout and "Next, on site" in r.stdout
    after = home.inventory.read_text()
    assert after.startswith(before.rstrip("\n"))  # nothing above was touched, comments included
    assert "# A T4xS with its own registrar transport override." in after
    assert "mac: 80:5e:c0:aa:bb:cc" in after and "display_name: Front Desk" in after
    assert home.cli("check").returncode == 0
    dev = next(d for d in json.loads(home.cli("devices", "--json").stdout) if d["mac"] == "805ec0aabbcc")
    assert dev["state"] == "enrolling" and dev["enrol_expires_at"]
    srv = start_server(home)
    try:
        assert srv.curl("805ec0aabbcc.cfg", ua_for("805ec0aabbcc", "T46S"))[0] == 200
    finally:
        srv.stop()


def test_adopt_twice_and_bad_input_are_refused(home: Home):
    base = ["--vendor", "yealink", "--model", "T41P", "--site", "lab", "--line", "120"]
    assert home.cli("adopt", "80:5e:c0:aa:bb:01", *base).returncode == 0
    before = home.inventory.read_text()
    r = home.cli("adopt", "805ec0aabb01", *base)
    assert r.returncode == 2 and "already adopted" in r.stderr
    for args, msg in [
        (["zz:zz", *base], "not a MAC"),
        (["80:5e:c0:aa:bb:02", "--vendor", "acme", "--model", "T41P", "--site", "lab", "--line", "121"], "unknown vendor"),
        (["80:5e:c0:aa:bb:03", "--vendor", "yealink", "--model", "T41P", "--site", "mars", "--line", "122"], "unknown site"),
        (["80:5e:c0:aa:bb:04", "--vendor", "yealink", "--model", "T41P", "--site", "lab", "--line", "120"], "already used"),
    ]:
        r = home.cli("adopt", *args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    assert home.inventory.read_text() == before  # a refused adopt changes nothing


def test_adopt_while_serving_takes_effect_without_restart(home: Home):
    import time
    srv = start_server(home)
    try:
        assert srv.curl("805ec0aabb10.cfg", ua_for("805ec0aabb10", "T46S"))[0] == 401  # not adopted yet
        r = home.cli("adopt", "80:5e:c0:aa:bb:10", "--vendor", "yealink", "--model", "T46S", "--site", "lab",
                     "--line", "130:Stock Room")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 15
        status = 401
        while status != 200 and time.monotonic() < deadline:  # the server notices within a second or two
            time.sleep(0.5)
            status = srv.curl("805ec0aabb10.cfg", ua_for("805ec0aabb10", "T46S"))[0]
        assert status == 200
        # a broken edit is ignored: the running inventory stays in force
        home.inventory.write_text(home.inventory.read_text() + "\nbroken: [\n")
        log = next(home.capture.glob("serve-*.log"))
        assert "inventory change ignored" in poll(log.read_text, lambda t: "inventory change ignored" in t,
                                                  timeout=15)
        assert srv.curl("y000000000000.cfg", "Yealink SIP-T46S 66.86.0.15")[0] == 200
        assert srv.proc.poll() is None
    finally:
        srv.stop()
