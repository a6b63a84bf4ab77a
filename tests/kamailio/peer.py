"""Real SIP peers for the registrar tests: Kamailio (Debian) with its SQLite subscriber DB, and sipp.

After ../shared/reference/kamailio/RECIPE.md: the cfg and sipp scenarios of this directory, schema from
/usr/share/kamailio/db_sqlite, WAL mode, DB URL with an absolute path, readiness by an OPTIONS probe,
stop by PID. sipp gets its password on the command line only (never in a file the leak scan reads).
"""

from __future__ import annotations

import atexit
import re
import socket
import sqlite3
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from provisioner.secret import Secret

HERE = Path(__file__).resolve().parent
SCHEMA = Path("/usr/share/kamailio/db_sqlite")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def options_ping(port: int, domain: str, timeout: float = 0.2) -> bool:
    """True once a Kamailio worker answers (the cfg replies 403 to anything but REGISTER)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        msg = (f"OPTIONS sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-ready\r\n"
               f"From: <sip:probe@{domain}>;tag=1\r\nTo: <sip:{domain}>\r\nCall-ID: ready-probe-{lport}\r\n"
               "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        s.sendto(msg.encode(), ("127.0.0.1", port))
        try:
            return s.recv(4096).startswith(b"SIP/2.0 ")
        except (socket.timeout, ConnectionRefusedError):
            return False


@dataclass
class Kamailio:
    proc: subprocess.Popen
    port: int
    db: Path
    dir: Path
    domain: str

    def rows(self) -> dict[str, tuple[str, str, str]]:
        """username -> (password column, ha1, ha1b) for the domain."""
        with closing(sqlite3.connect(self.db, timeout=10)) as c:
            return {u: (p, h1, h1b) for u, p, h1, h1b in c.execute(
                "SELECT username, password, ha1, ha1b FROM subscriber WHERE domain = ?", (self.domain,))}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to the main PID stops every worker
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def create_db(db: Path) -> None:
    with closing(sqlite3.connect(db)) as c:
        for f in ("standard-create.sql", "auth_db-create.sql", "usrloc-create.sql"):
            c.executescript((SCHEMA / f).read_text())
        c.execute("PRAGMA journal_mode=WAL")  # Kamailio's reads never hit "database is locked" while we write


def start_kamailio(workdir: Path, domain: str, location_db: bool = False, acl: bool = False,
                   with_schema: bool = True) -> Kamailio:
    """`with_schema=False`: Kamailio runs on a database that does not exist (it creates the file empty, and
    every REGISTER fails) until the test calls create_db(k.db)."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "kamailio.sqlite"
    if with_schema:
        create_db(db)
    port = free_udp_port()
    log = open(workdir / "kamailio.log", "w")
    cmd = ["kamailio", "-DD", "-E", "-f", str(HERE / "kamailio.cfg"), "-m", "32", "-M", "8",
           "-Y", str(workdir / "run"), "-A", f'DBURL="sqlite://{db}"', "-A", f"LISTEN=udp:127.0.0.1:{port}"]
    if location_db:
        cmd += ["-A", "LOCATION_DB"]
    if acl:
        with closing(sqlite3.connect(db)) as c:
            c.executescript((SCHEMA / "permissions-create.sql").read_text())
        cmd += ["-A", f'ACL="unix:{workdir / "ctl.sock"}"']
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    k = Kamailio(proc, port, db, workdir, domain)
    atexit.register(k.stop)  # a test that fails before its `finally` must not leave a registrar running
    deadline = time.monotonic() + 30  # bounded; a loaded machine (four engineers' tests) needs more than 10 s
    while not options_ping(port, domain):
        if proc.poll() is not None or time.monotonic() > deadline:
            k.stop()
            raise AssertionError(f"kamailio did not come up (rc={proc.poll()}):\n"
                                 + (workdir / "kamailio.log").read_text()[-3000:])
    return k


SIPP_OUTCOMES = (0, 1)  # 0: the scenario's expected answer came; 1: another answer (a failed call)


def sipp_register(k: Kamailio, user: str, password: Secret, accepted: bool = True, contact_port: int | None = None,
                  server: tuple[str, int] | None = None, domain: str | None = None, auth: str | None = None,
                  scenario: str | None = None) -> int:
    """One REGISTER dialog; sipp's exit code: 0 = the expected outcome (200 if `accepted`, else 401/403),
    1 = the registrar answered something else. Anything else (no answer: 255, sipp itself failed) raises:
    a test of a refusal must not pass because sipp crashed or the registrar was down.
    The password is a Secret, so a failing assertion shows ******** and never the password."""
    scenario = scenario or ("register.xml" if accepted else "register_reject.xml")
    extra = []
    if contact_port is not None:
        scenario = "register_contact.xml"
        extra = ["-key", "contact_port", str(contact_port)]
    if auth is not None:  # digest user name other than the To user (user@domain: Kamailio checks ha1b)
        extra += ["-au", auth]
    host, port = server or ("127.0.0.1", k.port)
    r = subprocess.run(
        ["sipp", f"{host}:{port}", "-sf", str(HERE / scenario), "-m", "1", "-s", user, "-ap", password.reveal(),
         "-key", "domain", domain or k.domain, *extra, "-i", "127.0.0.1", "-p", str(free_udp_port()), "-nostdin",
         "-timeout", "10s", "-timeout_error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=k.dir, timeout=30)
    if r.returncode not in SIPP_OUTCOMES:
        raise AssertionError(f"sipp {scenario} for {user}@{domain or k.domain} got no SIP answer or failed "
                             f"(exit {r.returncode}): {r.stderr.decode(errors='replace')[-500:]}")
    return r.returncode


class NotifyPhone:
    """sipp playing a phone's SIP side: answers one NOTIFY with 200 and logs its Event."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.log = workdir / f"notify-{self.port}.log"
        self.proc = subprocess.Popen(
            ["sipp", "-sf", str(HERE / "notify_uas.xml"), "-i", "127.0.0.1", "-p", str(self.port), "-m", "1",
             "-nostdin", "-trace_logs", "-log_file", str(self.log), "-timeout", "60s", "-timeout_error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
        deadline = time.monotonic() + 5  # bound: sipp binds its UDP port within milliseconds
        while time.monotonic() < deadline and not self._bound():
            time.sleep(0.02)

    def _bound(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", self.port))
                return False
            except OSError:
                return True

    def wait(self, timeout: float = 15) -> tuple[int | None, list[str]]:
        """(sipp's exit code, the Event values it got); None if it got nothing in time."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        events = re.findall(r"got NOTIFY .*? event=(\S*)", self.log.read_text()) if self.log.exists() else []
        return rc, events

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def registers(k: Kamailio, user: str, password: Secret, **kw) -> bool:
    """True when the registrar answers 200 to a REGISTER with these credentials."""
    return sipp_register(k, user, password, accepted=True, **kw) == 0


def refused(k: Kamailio, user: str, password: Secret, **kw) -> bool:
    """True when the registrar refuses these credentials (401/403 after the digest retry)."""
    return sipp_register(k, user, password, accepted=False, **kw) == 0


def forbidden(k: Kamailio, user: str, password: Secret, **kw) -> bool:
    """True when the registrar answers the first REGISTER with 403, before any authentication."""
    return sipp_register(k, user, password, scenario="register_forbidden.xml", **kw) == 0


def kamailio_inventory(text: str, k: Kamailio, site_line: str = "    networks: [127.0.0.0/8, 192.168.50.0/24]\n",
                       extra: str = "") -> str:
    """The bundled inventory with site lab registering on this Kamailio (SQLite subscriber table)."""
    reg = (f"    registrar: {{kind: kamailio, host: 127.0.0.1, port: {k.port}, domain: {k.domain}, transport: udp, "
           f"db: {k.db}{extra}}}\n")
    assert site_line in text
    return text.replace(site_line, site_line + reg)


class Phone:
    """curl playing a Yealink phone: keeps the config it was last served, fetches with what that config
    holds (anonymously before it has one), and never lets a secret reach a repr or an assertion message."""

    def __init__(self, mac: str, model: str = "T46G"):
        self.mac, self.model = mac, model
        self.cfg: bytes | None = None

    def __repr__(self) -> str:
        return f"Phone({self.mac}, config {self.hash[:12] if self.cfg else 'none'})"

    def fetch(self, srv, anonymous: bool = False, extra: tuple[str, ...] = ()) -> int:
        """HTTP status of one fetch of its own file (0: no answer, e.g. the server died mid-request)."""
        from conftest import ua_for
        cmd = ["curl", "-sS", "--max-time", "10", "--cacert", str(srv.ca), "-A", ua_for(self.mac, self.model),
               "-o", "-", "-w", "\n%{http_code}"]
        if self.cfg is not None and not anonymous:
            cmd += ["--digest", "-u", f"{self.mac}:{self.provisioning.reveal()}"]
        r = subprocess.run(cmd + [*extra, f"{srv.base}{self.mac}.cfg"], capture_output=True, timeout=20)
        if r.returncode != 0:
            return 0
        body, _, code = r.stdout.rpartition(b"\n")
        if int(code) == 200:
            self.cfg = body
        return int(code)

    def _values(self) -> dict[str, list[str]]:
        from conftest import kv
        assert self.cfg is not None, "the phone has no config yet"
        return kv(self.cfg)

    @property
    def provisioning(self) -> Secret:
        return Secret(self._values()["static.auto_provision.server.password"][0])

    def line(self, index: int = 1) -> tuple[str, Secret]:
        """(SIP auth user, password) of account <index>, read out of the config the phone holds."""
        v = self._values()
        return v[f"account.{index}.auth_name"][0], Secret(v[f"account.{index}.password"][0])

    def registrar(self, index: int = 1) -> tuple[str, int]:
        """Where the account's REGISTER goes: the outbound proxy when one is on (the registrar host differs
        from the SIP domain), else the SIP server."""
        v = self._values()
        if v.get(f"account.{index}.outbound_proxy_enable") == ["1"]:
            return (v[f"account.{index}.outbound_proxy.1.address"][0],
                    int(v[f"account.{index}.outbound_proxy.1.port"][0]))
        return v[f"account.{index}.sip_server.1.address"][0], int(v[f"account.{index}.sip_server.1.port"][0])

    @property
    def hash(self) -> str:
        import hashlib
        return hashlib.sha256(self.cfg or b"").hexdigest()


def start_serve(home, env: dict | None = None, crash_launcher: bool = False):
    """conftest.start_server, optionally through crash_cli.py; returns (Server, None) once it listens, or
    (None, exit code) when the process ended first (a kill point during start-up)."""
    import os
    import sys

    from conftest import REPO, Server, free_port
    https_port, tftp_port = free_port(), free_port(socket.SOCK_DGRAM)
    cmd = [sys.executable, str(HERE / "crash_cli.py")] if crash_launcher else [sys.executable, "-m", "provisioner"]
    log = open(home.capture / f"serve-{https_port}.log", "w")
    proc = subprocess.Popen([*cmd, "--home", str(home.path), "--inventory", str(home.inventory), "serve",
                             "--https", f"127.0.0.1:{https_port}", "--tftp", f"127.0.0.1:{tftp_port}"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})})
    log.close()
    srv = Server(home, proc, https_port, tftp_port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, proc.returncode
        try:
            with socket.create_connection(("127.0.0.1", https_port), timeout=0.2):
                return srv, None
        except OSError:
            time.sleep(0.05)
    srv.stop()
    raise AssertionError("serve did not start listening within 30 s")


def need_peers() -> None:
    """Kamailio with its SQLite modules, sipp and curl: skipped locally when missing, a failure in CI."""
    import pytest

    from conftest import IN_CI, need
    need("kamailio", "sipp", "curl")
    if not SCHEMA.is_dir():
        msg = "missing test peer: kamailio-sqlite-modules (installed by .ci/run)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
