"""Phone-facing HTTPS with curl as the phone: enrolment once, then digest; one 401 for everything else."""

from __future__ import annotations

import re
import sqlite3
import time

from conftest import Home, Server, kv, poll, start_server, ua_for

MAC = "805ec0123456"
FILE = f"{MAC}.cfg"


def password_of(body: bytes) -> str:
    return kv(body)["static.auto_provision.server.password"][0]


def challenge(srv: Server, filename: str, ua: str) -> tuple[int, str]:
    import subprocess
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(srv.ca), "-A", ua, "-o", "/dev/null",
                        "-D", "-", srv.base + filename], capture_output=True, text=True, timeout=20)
    status = int(r.stdout.split()[1])
    www = re.search(r"(?im)^www-authenticate: (.*)$", r.stdout)
    return status, re.sub(r'nonce="[^"]*"', 'nonce="…"', www.group(1).strip()) if www else ""


def test_enrolment_once_then_digest(server: Server):
    ua = ua_for(MAC)
    status, first = server.curl(FILE, ua)
    assert status == 200 and first.startswith(b"#!version:1.0.0.1")
    pw = password_of(first)
    assert len(pw) >= 20
    # the window closed with that answer: anonymous fetches now get the challenge
    status, body = server.curl(FILE, ua)
    assert status == 401 and b"password" not in body
    # the handed-out credentials work with digest and give the very same config
    status, again = server.curl(FILE, ua, user=MAC, password=pw)
    assert status == 200 and again == first
    # a wrong password does not
    assert server.curl(FILE, ua, user=MAC, password=pw[:-1] + "?")[0] == 401
    # another device's file with these credentials does not either (once its own window closed)
    assert server.curl("805ec0123457.cfg", ua_for("805ec0123457"))[0] == 200
    assert server.curl("805ec0123457.cfg", ua_for("805ec0123457"), user=MAC, password=pw)[0] == 401


def test_unknown_mac_gets_the_same_401_as_a_known_one(server: Server):
    known = challenge(server, "805ec0123457.cfg", "curl/8")  # known, window open, but the UA does not fit
    unknown = challenge(server, "805ec0999999.cfg", ua_for("805ec0999999"))
    enrolled = (server.curl(FILE, ua_for(MAC)), challenge(server, FILE, ua_for(MAC)))[1]
    assert known == unknown == enrolled
    assert known[0] == 401 and known[1].startswith('Digest realm="provisioner"')


def test_common_file_needs_no_auth_and_carries_no_secret(server: Server):
    status, body = server.curl("y000000000000.cfg", "Yealink SIP-T46G 28.83.0.50")
    assert status == 200 and b"password" not in body
    status, ca = server.curl("ca.pem")
    assert status == 200 and ca.startswith(b"-----BEGIN CERTIFICATE-----")


def test_enrolment_refuses_a_user_agent_that_does_not_fit(server: Server):
    assert server.curl(FILE, "curl/8.0")[0] == 401
    assert server.curl(FILE, ua_for("805ec0123457"))[0] == 401  # UA names another MAC
    assert server.curl(FILE, "Snom D785 10.1.1.1 000413aabbcc")[0] == 401
    # the window is still open for the real phone
    assert server.curl(FILE, ua_for(MAC))[0] == 200


def test_enrolment_refused_outside_the_sites_networks(home: Home):
    text = home.inventory.read_text().replace("networks: [127.0.0.0/8, 192.168.50.0/24]",
                                              "networks: [192.168.50.0/24]")
    home.inventory.write_text(text)
    srv = start_server(home)
    try:
        assert srv.curl(FILE, ua_for(MAC))[0] == 401
    finally:
        srv.stop()
    r = home.cli("devices", "--json", check=True)
    assert '"state": "enrolling"' in r.stdout  # still waiting for the real phone
    db = sqlite3.connect(home.path / "state.db")
    reasons = [r[0] for r in db.execute("select reason from fetch_events where mac = ?", (MAC,))]
    assert any("outside site lab" in r for r in reasons)


def test_expired_enrolment_window(home: Home):
    srv = start_server(home)
    try:
        db = sqlite3.connect(home.path / "state.db")
        db.execute("update devices set enrol_expires_at = '2000-01-01 00:00:00' where mac = ?", (MAC,))
        db.commit()
        assert srv.curl(FILE, ua_for(MAC))[0] == 401
    finally:
        srv.stop()
    # 401 is what every refusal looks like from outside: the recorded reason says which one it was
    reasons = poll(lambda: [r for (r,) in sqlite3.connect(home.path / "state.db").execute(
        "select reason from fetch_events where mac = ?", (MAC,))], bool, timeout=10)
    assert reasons == ["enrolment window expired; reopen it with adopt/reset"]


def test_unknown_file_names_and_traversal(server: Server):
    assert server.curl("nothing-asks-for-this.txt")[0] == 404
    assert server.curl("..%2f..%2fetc%2fpasswd", extra=("--path-as-is",))[0] == 404
    assert server.curl("../../etc/passwd", extra=("--path-as-is",))[0] == 404


def test_every_fetch_is_recorded_with_hash_and_reason(server: Server, home: Home):
    ua = ua_for(MAC)
    server.curl(FILE, ua)
    server.curl(FILE, ua)
    rows = poll(lambda: sqlite3.connect(home.path / "state.db").execute(
        "select status, hash, user_agent, source_ip, reason from fetch_events where mac=? order by id",
        (MAC,)).fetchall(), lambda rows: len(rows) >= 2, timeout=5)
    assert [r[0] for r in rows] == [200, 401]
    assert rows[0][1] and len(rows[0][1]) == 64 and rows[0][2] == ua and rows[0][3] == "127.0.0.1"
    assert "enrolment" in rows[0][4] and "window is closed" in rows[1][4]
    r = home.cli("devices", "--json", check=True)
    import json
    row = next(d for d in json.loads(r.stdout) if d["mac"] == MAC)
    assert row["state"] == "provisioned" and row["served_hash"] == rows[0][1] == row["desired_hash"]


def test_local_override_upload_needs_the_devices_credentials(server: Server, home: Home):
    ua = ua_for(MAC)
    status, cfg = server.curl(FILE, ua)
    pw = password_of(cfg)
    local = b"#!version:1.0.0.1\naccount.1.display_name = Changed On Phone\n"
    import subprocess

    def upload(user=None, password=None, name=f"{MAC}-local.cfg"):
        cmd = ["curl", "-sS", "--max-time", "10", "--cacert", str(server.ca), "-A", ua, "-o", "/dev/null",
               "-w", "%{http_code}", "-T", "-", server.base + name]
        if user:
            cmd[1:1] = ["--digest", "-u", f"{user}:{password}"]
        return int(subprocess.run(cmd, input=local, capture_output=True, timeout=20).stdout)

    assert upload() == 401
    assert upload(MAC, "wrong") == 401
    assert upload(MAC, pw, name="805ec0123457-local.cfg") == 401  # another device's file
    assert upload(MAC, pw) == 201
    db = sqlite3.connect(home.path / "state.db")
    (n, sealed), = db.execute("select count(*), sealed from uploads where mac=?", (MAC,)).fetchall()
    assert n == 1 and b"Changed On Phone" not in sealed  # sealed at rest


def test_oversized_request_heads_are_refused(server: Server):
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=str(server.ca))
    for size, expect in ((1_000, b"HTTP/1.1 200"), (100_000, b"HTTP/1.1 431")):
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.https_port), timeout=5),
                             server_hostname="127.0.0.1") as s:
            try:
                s.sendall(b"GET /p/y000000000000.cfg HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
            except OSError:
                pass  # the server may close before we finish sending
            assert s.recv(100).startswith(expect)
    # keep-alive still works after a normal request
    assert server.curl("y000000000000.cfg", "Yealink SIP-T46G 28.83.0.50")[0] == 200


def test_slow_request_heads_are_cut_off(home: Home):
    import socket
    import ssl
    srv = start_server(home, env={"PROVISIONER_HEAD_TIMEOUT": "1"})
    try:
        ctx = ssl.create_default_context(cafile=str(srv.ca))
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.https_port), timeout=10),
                             server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /p/y000000000000.cfg HTTP/1.1\r\nHost: x\r\n")  # ... and never the end
            started = time.monotonic()
            got = b""
            for _ in range(10):  # the server answers 408 and closes the connection
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            assert got.startswith(b"HTTP/1.1 408") and not chunk
            assert time.monotonic() - started < 8
        assert srv.curl("y000000000000.cfg", "Yealink SIP-T46G 28.83.0.50")[0] == 200
    finally:
        srv.stop()


def test_only_the_file_with_the_credentials_enrols(home: Home, tmp_path):
    """A profile with a second per-device file: fetching it first does not use up the enrolment window
    (it would hand out no credentials); after enrolment it is served with the device's digest."""
    import shutil
    from conftest import REPO
    vendors = tmp_path / "vendors"
    shutil.copytree(REPO / "vendors", vendors)
    y = vendors / "yealink.yaml"
    y.write_text(y.read_text().replace(
        '    trigger: true\n', '    trigger: true\n  - name: "{mac}-contacts.cfg"\n    template: yealink/common.cfg.j2\n', 1))
    srv = start_server(home, env={"PROVISIONER_VENDORS": str(vendors)})
    try:
        ua = ua_for(MAC)
        status, _ = srv.curl(f"{MAC}-contacts.cfg", ua)
        assert status == 401
        reason = poll(lambda: sqlite3.connect(home.path / "state.db").execute(  # written in batches
            "select reason from fetch_events where filename = ? order by id desc",
            (f"{MAC}-contacts.cfg",)).fetchone(), bool, timeout=5)
        assert reason and f"enrolment happens with {FILE}" in reason[0]
        status, cfg = srv.curl(FILE, ua)  # the window is still open: the device's own file enrols it
        assert status == 200
        status, extra = srv.curl(f"{MAC}-contacts.cfg", ua, user=MAC, password=password_of(cfg))
        assert status == 200 and extra.startswith(b"#!version:1.0.0.1")
    finally:
        srv.stop()


def _responses(raw: bytes, methods: list[str]) -> list[tuple[int, dict, bytes]]:
    """Split what came back on one connection into (status, headers, body), one per request sent."""
    out = []
    for method in methods:
        head, _, raw = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        n = 0 if method == "HEAD" else int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, raw[:n]))
        raw = raw[n:]
    assert raw == b"", "nothing after the last answer"
    return out


def test_one_connection_carries_head_pipelined_requests_and_an_upload_in_order(server: Server):
    """GET and HEAD are answered in the protocol itself, uploads through ASGI: on one connection, requests
    sent back to back are answered in order, HEAD without a body, `Connection: close` and HTTP/1.0 honoured."""
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=str(server.ca))
    ua = "Yealink SIP-T46G 28.83.0.50"

    def exchange(data: bytes) -> bytes:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.https_port), timeout=10),
                             server_hostname="127.0.0.1") as s:
            s.sendall(data)
            got = b""
            for _ in range(200):  # until the server closes the connection
                chunk = s.recv(65536)
                if not chunk:
                    return got
                got += chunk
        raise AssertionError("the server did not close the connection")

    common = f"Host: x\r\nUser-Agent: {ua}\r\n"
    raw = exchange((f"HEAD /p/y000000000000.cfg HTTP/1.1\r\n{common}\r\n"
                    f"GET /p/y000000000000.cfg HTTP/1.1\r\n{common}\r\n"
                    f"PUT /p/{MAC}-local.cfg HTTP/1.1\r\n{common}Content-Length: 5\r\n\r\nhello"
                    f"GET /p/ca.pem HTTP/1.1\r\n{common}\r\n"
                    f"GET /healthz HTTP/1.1\r\n{common}Connection: close\r\n\r\n").encode())
    (hs, hh, hb), (gs, gh, gb), (ps, ph, _), (cs, _, cb), (zs, zh, zb) = _responses(
        raw, ["HEAD", "GET", "PUT", "GET", "GET"])
    assert (hs, gs) == (200, 200) and hb == b"" and gb.startswith(b"#!version:1.0.0.1")
    assert hh["content-length"] == gh["content-length"] == str(len(gb)) and "date" in gh
    assert gh["cache-control"] == "no-store" and "connection" not in gh  # kept alive
    assert ps == 401 and "digest" in ph["www-authenticate"].lower()  # the upload (ASGI), then in order:
    assert cs == 200 and cb.startswith(b"-----BEGIN CERTIFICATE-----")
    assert (zs, zb, zh["connection"]) == (200, b"ok\n", "close")

    (status, headers, body), = _responses(exchange(b"GET /healthz HTTP/1.0\r\n\r\n"), ["GET"])
    assert (status, body, headers["connection"]) == (200, b"ok\n", "close")  # and then closed (exchange)
