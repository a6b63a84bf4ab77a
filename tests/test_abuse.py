"""Adversarial: MAC enumeration gets nothing and is throttled; stolen credentials lock the device; mTLS."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import random
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

from conftest import Home, Server, kv, start_server, ua_for

SITE_ONLY_LOCAL = "networks: [127.0.0.0/24]"


def site_on_127_0_0(home: Home, extra: str = "") -> None:
    text = home.inventory.read_text().replace("networks: [127.0.0.0/8, 192.168.50.0/24]", SITE_ONLY_LOCAL)
    home.inventory.write_text(text + extra)


class Client:
    """A scanner/phone bound to one loopback source address, keep-alive, like a script would do."""

    def __init__(self, srv: Server, source: str):
        ctx = ssl.create_default_context(cafile=str(srv.ca))
        self.conn = http.client.HTTPSConnection("127.0.0.1", srv.https_port, context=ctx, timeout=10,
                                                source_address=(source, 0))

    def get(self, name: str, ua: str) -> tuple[int, bytes]:
        try:
            self.conn.request("GET", f"/p/{name}", headers={"User-Agent": ua})
            r = self.conn.getresponse()
            return r.status, r.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()


def guesses(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [f"805ec0{rnd.randrange(1 << 24):06x}" for _ in range(n)]


def test_enumeration_from_one_source_gets_nothing_and_is_throttled(home: Home):
    site_on_127_0_0(home)
    srv = start_server(home)
    try:
        scanner = Client(srv, "127.1.2.3")
        statuses = []
        for mac in guesses(2000, 1) + ["805ec0123456", "805ec0123457"]:  # real MACs in the mix
            statuses.append(scanner.get(f"{mac}.cfg", ua_for(mac))[0])
        scanner.close()
        assert 200 not in statuses
        first_ban = next(i for i, s in enumerate(statuses) if s in (429, 403))
        assert first_ban <= 20
        assert set(statuses[first_ban:]) <= {429, 403}
        # a legitimate phone from its site network is unaffected during the ban
        assert srv.curl("805ec0123456.cfg", ua_for("805ec0123456"))[0] == 200
    finally:
        srv.stop()
    db = sqlite3.connect(home.path / "state.db")
    assert db.execute("select count(*) from audit_log where action='source.banned' and target='127.1.2.3'").fetchone()[0] >= 1


def test_slow_scan_from_many_sources_of_one_network(home: Home):
    site_on_127_0_0(home)
    srv = start_server(home)
    try:
        statuses = []
        for i, batch in enumerate([guesses(8, 100 + i) for i in range(8)]):  # 8 sources, each below its limit
            c = Client(srv, f"127.1.5.{10 + i}")
            statuses += [c.get(f"{m}.cfg", ua_for(m))[0] for m in batch]
            c.close()
        assert 200 not in statuses
        assert statuses[:9] == [401] * 9 and 429 in statuses  # the network is throttled as one
        assert srv.curl("805ec0123457.cfg", ua_for("805ec0123457"))[0] == 200
    finally:
        srv.stop()


def test_ban_runs_the_alert_command(home: Home, tmp_path: Path):
    out = tmp_path / "alerts.jsonl"
    script = tmp_path / "alert.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')\n")
    site_on_127_0_0(home, f"\nsecurity:\n  ban_after: 5\n  alert_command: [{sys.executable}, {script}, {out}]\n")
    srv = start_server(home)
    try:
        c = Client(srv, "127.1.9.9")
        for m in guesses(6, 7):
            c.get(f"{m}.cfg", ua_for(m))
        c.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not out.exists():
            time.sleep(0.1)
    finally:
        srv.stop()
    event = json.loads(out.read_text().splitlines()[0])
    assert event["kind"] == "source.banned" and event["target"] == "127.1.9.9"


def test_phone_digest_dance_never_bans_it(server: Server):
    status, cfg = server.curl("805ec0123456.cfg", ua_for("805ec0123456"))
    pw = kv(cfg)["static.auto_provision.server.password"][0]
    for _ in range(15):  # every fetch is an anonymous 401 then the authenticated 200
        assert server.curl("805ec0123456.cfg", ua_for("805ec0123456"), user="805ec0123456", password=pw)[0] == 200


def test_credentials_used_from_outside_the_site_lock_the_device(home: Home):
    site_on_127_0_0(home)
    srv = start_server(home)
    try:
        status, cfg = srv.curl("805ec0123456.cfg", ua_for("805ec0123456"))
        pw = kv(cfg)["static.auto_provision.server.password"][0]
        status, _ = srv.curl("805ec0123456.cfg", ua_for("805ec0123456"), user="805ec0123456", password=pw,
                             extra=("--interface", "127.0.1.5"))
        assert status == 401
        # locked: even from inside the site, with the right credentials
        assert srv.curl("805ec0123456.cfg", ua_for("805ec0123456"), user="805ec0123456", password=pw)[0] == 401
    finally:
        srv.stop()
    st = json.loads(home.cli("devices", "--json", check=True).stdout)
    assert next(d for d in st if d["mac"] == "805ec0123456")["state"] == "locked"
    db = sqlite3.connect(home.path / "state.db")
    assert db.execute("select count(*) from audit_log where action='device.locked'").fetchone()[0] == 1


def _device_ca(tmp: Path, macs: list[str]) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Vendor Device CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    (tmp / "device-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out = {}
    for mac in macs:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, mac)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                .sign(ca_key, hashes.SHA256()))
        c, k = tmp / f"{mac.replace(':', '')}.crt", tmp / f"{mac.replace(':', '')}.key"
        c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        out[mac] = (c, k)
    return tmp / "device-ca.pem", out


def test_mutual_tls_with_a_device_certificate(home: Home):
    ca, certs = _device_ca(home.inventory.parent, ["80:5E:C0:12:34:56", "80:5E:C0:12:34:57"])
    text = home.inventory.read_text().replace("    tftp: bootstrap", "    tftp: bootstrap\n    auth: mtls")
    home.inventory.write_text(text + f"\nsecurity:\n  client_ca: {ca.name}\n")
    assert home.cli("check").returncode == 0
    srv = start_server(home)
    try:
        ua = ua_for("805ec0123456")
        crt, key = certs["80:5E:C0:12:34:56"]
        status, body = srv.curl("805ec0123456.cfg", ua, extra=("--cert", str(crt), "--key", str(key)))
        assert status == 200 and b"account.1.password" in body
        assert srv.curl("805ec0123456.cfg", ua)[0] == 401  # no certificate: no config, no enrolment
        crt2, key2 = certs["80:5E:C0:12:34:57"]
        assert srv.curl("805ec0123456.cfg", ua, extra=("--cert", str(crt2), "--key", str(key2)))[0] == 401
    finally:
        srv.stop()
