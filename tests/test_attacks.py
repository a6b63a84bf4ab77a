"""Attacks of issue 15, each run against a real `serve` as an attacker would run it (loopback only).

Sources: the lab site is 127.0.0.0/24 here; attackers outside it use 127.1.x.y, inside it 127.0.0.x.
Forged UDP goes through a raw socket (tests/forge.py) to 127.0.0.1 and never leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import Home, Server, kv, poll, start_server, ua_for
from forge import Forger, require_raw_sockets, rrq

MAC, MAC2 = "805ec0123456", "805ec0123457"
FILE = f"{MAC}.cfg"
SITE = "networks: [127.0.0.0/24]"


def lab(home: Home, security: str = "") -> None:
    """The bundled inventory with the site on 127.0.0.0/24 and extra `security:` keys."""
    text = home.inventory.read_text().replace("networks: [127.0.0.0/8, 192.168.50.0/24]", SITE)
    if security:
        text += "\nsecurity:\n" + "".join(f"  {line.strip()}\n" for line in security.strip().splitlines())
    home.inventory.write_text(text)


def password_of(body: bytes) -> str:
    return kv(body)["static.auto_provision.server.password"][0]


def db(home: Home) -> sqlite3.Connection:
    return sqlite3.connect(home.path / "state.db")


def audit_actions(home: Home, action: str, target: str | None = None) -> int:
    q, args = "select count(*) from audit_log where action=?", [action]
    if target is not None:
        q, args = q + " and target=?", args + [target]
    return db(home).execute(q, args).fetchone()[0]


class Conn:
    """One TLS connection from a chosen loopback source, speaking raw HTTP/1.1 (keep-alive)."""

    def __init__(self, srv: Server, source: str = "127.0.0.1", timeout: float = 10):
        self.ctx = ssl.create_default_context(cafile=str(srv.ca))
        raw = socket.create_connection(("127.0.0.1", srv.https_port), timeout=timeout, source_address=(source, 0))
        self.s = self.ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def request(self, path: str, ua: str | None = None, authorization: str | None = None,
                extra: str = "") -> tuple[int, dict, bytes]:
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if ua:
            head += f"User-Agent: {ua}\r\n"
        if authorization:
            head += f"Authorization: {authorization}\r\n"
        self.send((head + extra + "\r\n").encode())
        return self.response()

    def response(self) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            rest += chunk
        self.buf = rest[n:]
        return int(lines[0].split()[1]), headers, rest[:n]

    def closed_by_server(self, timeout: float) -> bool:
        """True if the server closes this connection within `timeout` seconds (whatever it wrote first)."""
        self.s.settimeout(timeout)
        try:
            while self.s.recv(65536):
                pass
            return True
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True

    def close(self) -> None:
        try:
            self.s.close()
        except OSError:
            pass


def digest_header(challenge: str, user: str, password: str, uri: str, nc: int = 1, cnonce: str | None = None,
                  qop: bool = True, method: str = "GET") -> str:
    """What a phone sends back (RFC 7616, MD5, qop=auth unless qop=False: the RFC 2069 form)."""
    nonce = re.search(r'nonce="([^"]+)"', challenge).group(1)
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = md5(f"{user}:provisioner:{password}"), md5(f"{method}:{uri}")
    if not qop:
        return (f'Digest username="{user}", realm="provisioner", nonce="{nonce}", uri="{uri}", '
                f'response="{md5(f"{ha1}:{nonce}:{ha2}")}", algorithm=MD5')
    cnonce = cnonce or secrets.token_hex(8)
    ncv = f"{nc:08x}"
    resp = md5(f"{ha1}:{nonce}:{ncv}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{user}", realm="provisioner", nonce="{nonce}", uri="{uri}", response="{resp}", '
            f'qop=auth, nc={ncv}, cnonce="{cnonce}", algorithm=MD5')


def enrol(srv: Server, mac: str = MAC, model: str = "T46G", source: str = "127.0.0.1") -> str:
    c = Conn(srv, source)
    try:
        status, _, body = c.request(f"/p/{mac}.cfg", ua_for(mac, model))
    finally:
        c.close()
    assert status == 200, status
    return password_of(body)


def fetch_with_digest(srv: Server, password: str, mac: str = MAC, model: str = "T46G",
                      source: str = "127.0.0.1") -> int:
    """A phone's fetch: the anonymous request, its 401 challenge, the authenticated request."""
    c = Conn(srv, source)
    try:
        path = f"/p/{mac}.cfg"
        status, headers, _ = c.request(path, ua_for(mac, model))
        if status != 401:
            return status
        return c.request(path, ua_for(mac, model), digest_header(headers["www-authenticate"], mac, password,
                                                                  path))[0]
    finally:
        c.close()


def devices(home: Home) -> dict[str, dict]:
    return {d["mac"]: d for d in json.loads(home.cli("devices", "--json", check=True).stdout)}


# ---- 1. held request bodies ----------------------------------------------------------------------------

def test_held_request_bodies_are_capped_cut_off_and_counted_while_a_phone_elsewhere_gets_200(home: Home):
    """The attack: TLS connections that send a GET with `Content-Length: 1000` and then nothing. Here the
    server's limits are low (60 connections in all, 10 per source, 30 per network) so that 80 connections
    show what 4,000 did to the default limits."""
    lab(home, "max_connections: 60\nconnections_per_source: 10\nconnections_per_network: 30\nbody_seconds: 3")
    srv = start_server(home)
    held: list[Conn] = []
    try:
        for i in range(80):  # four addresses of one network outside the site, 20 connections each
            try:
                c = Conn(srv, f"127.1.0.{10 + i % 4}", timeout=5)
                c.send(f"GET /p/{FILE} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode())
                held.append(c)
            except OSError:
                pass
        time.sleep(0.5)
        open_now = [c for c in held if not c.closed_by_server(0.05)]
        assert len(open_now) <= 30, f"{len(open_now)} connections held by one network"
        # while they are held: a phone elsewhere enrols and fetches with its credentials
        pw = enrol(srv)
        assert fetch_with_digest(srv, pw) == 200
        # the body deadline cuts the held ones off
        assert all(c.closed_by_server(3 + 5) for c in open_now)
        # held connections count against their source: 10+ of them banned 127.1.0.10..13
        c = Conn(srv, "127.1.0.10")
        try:
            status = c.response()[0]  # refused at once, before any request
        except (ConnectionError, OSError):
            status = None
        finally:
            c.close()
        assert status in (429, 403)
        assert fetch_with_digest(srv, pw) == 200
    finally:
        for c in held:
            c.close()
        srv.stop()
    assert audit_actions(home, "source.banned") >= 1


def test_a_slow_upload_body_is_cut_off(home: Home):
    lab(home, "body_seconds: 2")
    srv = start_server(home)
    try:
        c = Conn(srv, "127.0.0.9")
        c.send(f"PUT /p/{MAC}-local.cfg HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc".encode())
        started = time.monotonic()
        assert c.closed_by_server(15)
        assert time.monotonic() - started < 2 + 10  # the deadline (without one the upload waited for ever)
        c.close()
    finally:
        srv.stop()
    assert db(home).execute("select count(*) from uploads").fetchone()[0] == 0


# ---- 2. forged UDP -----------------------------------------------------------------------------------------

def test_forged_tftp_requests_never_ban_https(home: Home):
    """10 forged RRQs with a phone's address used to ban its HTTPS fetches (and 40 across a /24 the
    whole network): a UDP source address costs nothing to forge."""
    require_raw_sockets()
    lab(home)
    srv = start_server(home)
    try:
        with Forger() as f:
            for i in range(30):  # names no vendor asks for: failures, were they counted
                f.send("127.0.0.1", 20000 + i, srv.tftp_port, rrq(f"nothing-{i}.bin"))
            for i in range(60):  # the same across a network outside the site
                f.send(f"127.1.9.{1 + i}", 20000 + i, srv.tftp_port, rrq(f"nothing-{i}.bin"))
        time.sleep(1.0)
        pw = enrol(srv)  # the phone at 127.0.0.1
        assert fetch_with_digest(srv, pw) == 200
        c = Conn(srv, "127.1.9.200")  # a host of the forged network, with one HTTPS request
        try:
            assert c.request(f"/p/{MAC2}.cfg", ua_for(MAC2))[0] == 401
        finally:
            c.close()
    finally:
        srv.stop()
    assert audit_actions(home, "source.banned") == 0 and audit_actions(home, "network.banned") == 0


# ---- 3. the ban counter is no oracle ------------------------------------------------------------------------

def test_ban_counter_does_not_tell_whether_a_mac_exists(home: Home):
    """9 unknown MACs, then a candidate, then one more: an enrolled candidate used not to count (401 on
    the 11th request), an unknown one did (429)."""
    lab(home)
    srv = start_server(home)
    try:
        enrol(srv)  # the candidate exists and is enrolled
        seen = {}
        for source, candidate in (("127.1.3.1", MAC), ("127.1.4.1", "805ec0fedcba")):
            c = Conn(srv, source)
            statuses = []
            for i in range(9):
                m = f"805ec0{0xa00000 + i:06x}"
                statuses.append(c.request(f"/p/{m}.cfg", ua_for(m))[0])
            statuses.append(c.request(f"/p/{candidate}.cfg", ua_for(candidate))[0])
            statuses.append(c.request(f"/p/805ec0abcdef.cfg", ua_for("805ec0abcdef"))[0])
            c.close()
            seen[candidate] = statuses
        assert seen[MAC] == seen["805ec0fedcba"], seen
        assert seen[MAC][-1] in (429, 403)
    finally:
        srv.stop()


# ---- 4. a success does not erase failures for other MACs ----------------------------------------------------

def test_one_valid_credential_does_not_buy_unlimited_guessing(home: Home):
    """9 guesses + 1 valid fetch, repeated, never banned. Inside a site the ban refuses anonymous service
    only (a NAT address may carry real phones): the guesser's own valid fetches keep working."""
    lab(home)
    srv = start_server(home)
    try:
        pw = enrol(srv, source="127.0.0.9")
        statuses, valid = [], []
        for round_ in range(3):
            c = Conn(srv, "127.0.0.9")
            for i in range(9):
                m = f"805ec0{0xb00000 + 16 * round_ + i:06x}"
                statuses.append(c.request(f"/p/{m}.cfg", ua_for(m))[0])
            c.close()
            valid.append(fetch_with_digest(srv, pw, source="127.0.0.9"))
        assert 200 not in statuses and valid == [200, 200, 200]
    finally:
        srv.stop()
    assert audit_actions(home, "source.banned", "127.0.0.9") == 1


# ---- 5. digest replay ----------------------------------------------------------------------------------------

def test_a_captured_authorization_header_cannot_be_replayed(home: Home):
    lab(home)
    srv = start_server(home)
    try:
        pw = enrol(srv, source="127.0.0.5")
        path = f"/p/{FILE}"
        c = Conn(srv, "127.0.0.5")
        status, headers, body = c.request(path, ua_for(MAC))
        assert status == 401
        www = headers["www-authenticate"]
        captured = digest_header(www, MAC, pw, path, nc=1, cnonce="c0ffee")
        assert c.request(path, ua_for(MAC), captured)[0] == 200  # the phone's own request
        assert c.request(path, ua_for(MAC), captured)[0] == 401  # the same header again: a replay
        # the next nonce count from the phone is fine, the same count with another cnonce is not
        assert c.request(path, ua_for(MAC), digest_header(www, MAC, pw, path, nc=2))[0] == 200
        assert c.request(path, ua_for(MAC), digest_header(www, MAC, pw, path, nc=2, cnonce="beef"))[0] == 401
        # without qop (RFC 2069) nothing binds a count: refused
        assert c.request(path, ua_for(MAC), digest_header(www, MAC, pw, path, qop=False))[0] == 401
        c.close()
        # from another address: the nonce is bound to the phone's
        other = Conn(srv, "127.0.0.66")
        assert other.request(path, ua_for(MAC), digest_header(www, MAC, pw, path, nc=3))[0] == 401
        assert other.request(path, ua_for(MAC), captured)[0] == 401
        other.close()
        time.sleep(1.0)  # batched bookkeeping is written within 0.2 s
    finally:
        srv.stop()
    assert devices(home)[MAC]["last_ip"] == "127.0.0.5"  # a replay never moves where NOTIFYs go


# ---- 6. enrolment theft ---------------------------------------------------------------------------------------

def test_enrolment_needs_the_mac_in_the_user_agent_and_a_fitting_model(server: Server):
    assert server.curl(FILE, "Yealink T1 1.1")[0] == 401  # no MAC, no such model
    assert server.curl(FILE, "Yealink SIP-T46G 66.86.0.15")[0] == 401  # Yealink sends its MAC
    assert server.curl(FILE, ua_for(MAC, "T46S"))[0] == 401  # the inventory says T46G (T4x), not a T4xS
    assert server.curl(FILE, ua_for(MAC, "T46G"))[0] == 200  # the real phone
    assert server.curl(f"{MAC2}.cfg", ua_for(MAC2, "T46G"))[0] == 200  # T41P in the inventory: same family


def test_an_enrolment_conflict_is_raised_audited_alerted_and_locks_the_device(home: Home, tmp_path: Path):
    """A thief claimed the enrolment; the real phone then asks anonymously from another address and never
    authenticates: an enrolment conflict."""
    out = tmp_path / "alerts.jsonl"
    script = tmp_path / "alert.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')\n")
    lab(home, f"alert_command: [{sys.executable}, {script}, {out}]")
    srv = start_server(home, env={"PROVISIONER_CONFLICT_GRACE": "1"}, api=True)
    try:
        thief_pw = enrol(srv, source="127.0.0.50")
        assert fetch_with_digest(srv, thief_pw, source="127.0.0.50") == 200
        phone = Conn(srv, "127.0.0.60")
        ua = "Yealink SIP-T46G 66.86.0.20 80:5e:c0:12:34:56"
        assert phone.request(f"/p/{FILE}", ua)[0] == 401  # the real phone, after a reboot
        phone.close()
        state = poll(lambda: devices(home)[MAC]["state"], lambda s: s == "locked", timeout=15)
        assert state == "locked"
        assert fetch_with_digest(srv, thief_pw, source="127.0.0.50") == 401  # the thief is cut off too
        events = poll(lambda: out.read_text().splitlines() if out.exists() else [],
                      lambda lines: any("enrolment.conflict" in ln for ln in lines), timeout=10)
        event = next(json.loads(ln) for ln in events if "enrolment.conflict" in ln)
        assert event["target"] == MAC and event["source_ip"] == "127.0.0.60"
        token = json.loads(home.cli("api", "tokens", "create", "--role", "viewer", "--json", check=True).stdout)
        metrics = httpx.get(f"{srv.api_base}/metrics", verify=ssl.create_default_context(cafile=str(srv.ca)), timeout=10,
                            headers={"Authorization": f"Bearer {token['token']}"}).text
        assert re.search(r"^provisioner_enrolment_conflicts_total 1$", metrics, re.M), metrics
    finally:
        srv.stop()
    entry = db(home).execute("select why, details from audit_log where action='enrolment.conflict'").fetchone()
    assert entry and "127.0.0.50" in entry[0] and "127.0.0.60" in entry[0]
    r = home.cli("audit", "--json", "-")
    assert r.returncode == 3
    finding = next(f for f in json.loads(r.stdout)["findings"] if f["type"] == "enrolment-conflict")
    assert finding["device"] == MAC and "127.0.0.60" in finding["evidence"]
    explained = home.cli("explain", MAC, check=True).stdout
    assert "enrolment conflict" in explained and "127.0.0.60" in explained


def test_a_phone_that_moved_address_is_no_conflict(home: Home):
    lab(home)
    srv = start_server(home, env={"PROVISIONER_CONFLICT_GRACE": "1"})
    try:
        pw = enrol(srv, source="127.0.0.50")
        assert fetch_with_digest(srv, pw, source="127.0.0.51") == 200  # DHCP gave it another address
        time.sleep(3)
        assert fetch_with_digest(srv, pw, source="127.0.0.51") == 200
    finally:
        srv.stop()
    assert devices(home)[MAC]["state"] == "provisioned"
    assert audit_actions(home, "enrolment.conflict") == 0


# ---- 7. helpdesk reset --------------------------------------------------------------------------------------------

def test_a_helpdesk_reset_reopens_enrolment_only_for_the_last_known_address(home: Home):
    lab(home)
    srv = start_server(home, api=True)
    try:
        pw = enrol(srv, source="127.0.0.5")
        assert fetch_with_digest(srv, pw, source="127.0.0.5") == 200
        time.sleep(0.5)
        tokens = {role: json.loads(home.cli("api", "tokens", "create", "--role", role, "--json",
                                            check=True).stdout)["token"] for role in ("helpdesk", "admin")}

        def job(role: str, body: dict, key: str) -> httpx.Response:
            return httpx.post(f"{srv.api_base}/api/v1/jobs", json=body, verify=ssl.create_default_context(cafile=str(srv.ca)), timeout=10,
                              headers={"Authorization": f"Bearer {tokens[role]}", "Idempotency-Key": key})

        def done(r: httpx.Response) -> dict:
            assert r.status_code == 202, r.text
            return poll(lambda: httpx.get(f"{srv.api_base}/api/v1/jobs/{r.json()['id']}", verify=ssl.create_default_context(cafile=str(srv.ca)),
                                          headers={"Authorization": f"Bearer {tokens['admin']}"}).json(),
                        lambda j: j["status"] in ("done", "failed"), timeout=30)

        # only an admin may open the window to the whole site
        assert job("helpdesk", {"action": "reset", "mac": MAC, "enrol_from": "site"}, "r0").status_code == 403
        assert done(job("helpdesk", {"action": "reset", "mac": MAC}, "r1"))["status"] == "done"
        stranger = Conn(srv, "127.0.0.6")  # in the site, fitting User-Agent, but not the phone's address
        assert stranger.request(f"/p/{FILE}", ua_for(MAC))[0] == 401
        stranger.close()
        assert enrol(srv, source="127.0.0.5")  # the phone, back from its factory reset
        assert done(job("admin", {"action": "reset", "mac": MAC, "enrol_from": "site"}, "r2"))["status"] == "done"
        assert enrol(srv, source="127.0.0.7")
    finally:
        srv.stop()


# ---- 8. bounded writes from banned sources ---------------------------------------------------------------------

def test_banned_sources_are_summarised_and_alerts_are_rate_limited(home: Home, tmp_path: Path):
    out = tmp_path / "alerts.jsonl"
    script = tmp_path / "alert.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')\n")
    lab(home, f"alert_command: [{sys.executable}, {script}, {out}]\nalerts_per_minute: 5")
    srv = start_server(home)
    try:
        c = Conn(srv, "127.1.8.1")
        pipelined = "".join(f"GET /p/805ec0{0xc00000 + i:06x}.cfg HTTP/1.1\r\nHost: x\r\n\r\n" for i in range(300))
        c.send(pipelined.encode())
        statuses = [c.response()[0] for _ in range(300)]
        c.close()
        assert statuses.count(401) == 10 and set(statuses[10:]) <= {429, 403}
        for i in range(20):  # 20 more sources banned: 20 events, alerts rate-limited
            c = Conn(srv, f"127.1.{20 + i}.1")
            for j in range(10):
                c.request(f"/p/805ec0{0xd00000 + 16 * i + j:06x}.cfg")
            c.close()
        time.sleep(3)
    finally:
        srv.stop()
    rows = db(home).execute("select count(*) from fetch_events where source_ip='127.1.8.1'").fetchone()[0]
    assert rows <= 12, f"{rows} rows for one banned source"
    summary = db(home).execute("select reason from fetch_events where source_ip='127.1.8.1' and status in (429, 403)"
                               ).fetchall()
    assert sum(int(re.search(r"(\d+) requests", r[0]).group(1)) for r in summary) == 290
    alerts = out.read_text().splitlines()
    assert 1 <= len(alerts) <= 5 + 1, f"{len(alerts)} alerts"
    assert any("suppressed" in a for a in alerts) or len(alerts) == 21
    assert audit_actions(home, "source.banned") == 21


def test_old_fetch_events_are_pruned_in_batches(home: Home):
    lab(home, "fetch_event_days: 7")
    home.cli("check", check=True)
    home.cli("devices", check=True)  # creates the store
    con = db(home)
    con.executemany("insert into fetch_events (at, mac, source_ip, transport, filename, status, reason) "
                    "values (?, null, '127.1.1.1', 'https', 'x.cfg', 401, 'old')",
                    [("2000-01-01 00:00:00",)] * 12_000 + [("2999-01-01 00:00:00",)] * 3)
    con.commit()
    srv = start_server(home)
    try:
        left = poll(lambda: db(home).execute("select count(*) from fetch_events where reason='old'").fetchone()[0],
                    lambda n: n == 3, timeout=30)
        assert left == 3
    finally:
        srv.stop()


# ---- 9. smaller ones ----------------------------------------------------------------------------------------------

def _victims(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.77", 0))
        s.setblocking(False)
        out.append(s)
    return out


def _drain(socks: list[socket.socket]) -> tuple[int, int]:
    """(datagrams, bytes) that reached the victims since the last call."""
    n = got = 0
    for s in socks:
        while True:
            try:
                got += len(s.recv(65536))
                n += 1
            except BlockingIOError:
                break
    return n, got


def test_tftp_is_no_reflector_and_forged_requests_hold_no_descriptors(home: Home):
    require_raw_sockets()
    lab(home)
    srv = start_server(home)
    victims = _victims(100)
    try:
        with Forger() as f:
            for v in victims:  # 100 forged requests from one victim's address, one per port
                f.send("127.0.0.77", v.getsockname()[1], srv.tftp_port, rrq(FILE))
            sent = f.sent_bytes
            datagrams = received = 0
            deadline = time.monotonic() + 12  # long enough for tftpy's retransmissions (5 s apart)
            while time.monotonic() < deadline:
                n, b = _drain(victims)
                datagrams, received = datagrams + n, received + b
                time.sleep(0.2)
            # at most the per-source burst of answers, none retransmitted (it was 100 answers, each resent)
            assert datagrams <= 25, f"{datagrams} datagrams, {received} bytes reflected for {sent} bytes sent"
            # 3,000 forged requests from many sources: descriptors stay bounded
            before = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
            for i in range(3000):
                f.send(f"127.4.{i // 250}.{1 + i % 250}", 30000 + i % 1000, srv.tftp_port, rrq(FILE))
            time.sleep(1.0)
            fds = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
            assert fds - before <= 300, f"{fds - before} descriptors held by forged requests"
        # a real phone still gets its bootstrap over TFTP
        assert srv.tftp(FILE, home.path.parent / "boot.cfg") is not None
    finally:
        for v in victims:
            v.close()
        srv.stop()


def test_a_real_client_whose_first_answer_was_lost_still_gets_the_file(server: Server, tmp_path: Path):
    """No timer retransmission to a peer that never ACKed; the requester's repeated RRQ (RFC 1350) is
    answered instead. tftp-hpa's client repeats its RRQ when the first DATA does not come."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.bind(("127.0.0.1", 0))
    try:
        s.sendto(rrq(FILE), ("127.0.0.1", server.tftp_port))
        first, addr = s.recvfrom(65536)  # pretend it was lost: do not ACK, ask again
        s.sendto(rrq(FILE), ("127.0.0.1", server.tftp_port))
        again, addr2 = s.recvfrom(65536)
        assert first[:4] == again[:4] == b"\x00\x03\x00\x01" and addr == addr2
        data = again[4:]
        block = 1
        while len(again) - 4 == 512:
            s.sendto(b"\x00\x04" + block.to_bytes(2, "big"), addr)
            again, _ = s.recvfrom(65536)
            block += 1
            data += again[4:]
        s.sendto(b"\x00\x04" + block.to_bytes(2, "big"), addr)
        assert data.startswith(b"#!version:1.0.0.1")
    finally:
        s.close()


def test_pipelined_requests_in_one_write_are_not_a_false_431(server: Server):
    c = Conn(server, "127.0.0.1")
    try:
        ua = "Yealink SIP-T46G 28.83.0.50"
        c.send(("".join(f"GET /p/y000000000000.cfg HTTP/1.1\r\nHost: x\r\nUser-Agent: {ua}\r\n\r\n"
                        for _ in range(200))).encode())
        assert [c.response()[0] for _ in range(200)] == [200] * 200
    finally:
        c.close()


def test_a_rewritten_audit_entry_is_detected_even_with_its_chain_recomputed(home: Home):
    """An attacker with write access to the database edits an entry and recomputes every later hash and
    the head, as the chain's (public) algorithm allows: the keyed chain still tells."""
    home.cli("check", check=True)
    home.cli("devices", check=True)
    assert home.cli("audit").returncode in (0, 3)
    con = db(home)
    rows = con.execute("select id, at, actor, action, target, why, details from audit_log order by id").fetchall()
    prev = "0" * 64
    for i, (id_, at, actor, action, target, why, details) in enumerate(rows):
        if i == 0:
            why = "nothing happened here"
        import datetime as dt
        when = dt.datetime.fromisoformat(at).replace(tzinfo=dt.timezone.utc)
        entry = {"at": when.isoformat(), "actor": actor, "action": action, "target": target, "why": why,
                 "details": details}
        h = hashlib.sha256((prev + json.dumps(entry, sort_keys=True)).encode()).hexdigest()
        con.execute("update audit_log set why=?, prev_hash=?, entry_hash=? where id=?", (why, prev, h, id_))
        prev = h
    con.execute("update audit_head set last_hash=? where id=1", (prev,))
    con.commit()
    r = home.cli("audit", "--json", "-")
    assert r.returncode == 3
    tamper = [f for f in json.loads(r.stdout)["findings"] if f["type"] == "tamper"]
    assert tamper, r.stdout
