#!/usr/bin/env python3
"""Attacks against a running server while legitimate phones fetch; prints what the phones saw.

Starts `provisioner serve` on loopback with N phones in a site on 127.0.0.0/24, then runs one or more
attacks, each while the phones (sources 127.0.0.x) enrol and keep fetching their config with HTTP digest
on new TLS connections, as phones do at boot:

  guess   MAC guessing: scanners on many sources outside the site (127.2.x.y) ask for guessed per-device
          files of the phones' OUI with a fitting User-Agent (keep-alive, hopping addresses like a botnet).
          Must leak nothing.
  held    held request bodies (issue 15, point 1): from ONE address outside the site (127.1.0.9), --held
          TLS connections (default 4,000) that send `GET /p/<mac>.cfg` with `Content-Length: 1000` and
          then nothing; a closed one is opened again (a persistent attacker, at most 400 new connections a
          second per process).
  tftp    forged UDP (points 2 and 9, needs root for a raw socket): --forged-rate TFTP read requests a
          second with forged source addresses: half of them the phones' own addresses (were TFTP failures
          counted, the phones' HTTPS would be banned), half a victim's (127.0.0.77, on 500 ports where this
          bench listens and counts what the server reflects to it), plus requests from 3,000 other
          addresses. The phones also fetch their TFTP bootstrap during it.

Reported per attack: the phones' answers (status counts, share of fetches that got their config, median
and 99th percentile time per fetch), what the attacker got, the server's open descriptors, and for tftp
the reflection factor (bytes the victim received / bytes of the forged requests sent in its name).
Everything stays on 127.0.0.1 (forged datagrams go to 127.0.0.1 only); every loop is bounded by time and
count; the server and every worker are stopped at the end. `--tree DIR` serves from another source tree
(e.g. an export of an older commit) to measure it with the same clients in the same conditions.

    .venv/bin/python bench/attack.py [--attack guess,held,tftp] [--devices 200] [--seconds 20] [--held 4000]
                                     [--forged-rate 2000] [--tree DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import multiprocessing as mp
import os
import random
import re
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUI = "805ec0"
ATTACKER = "127.1.0.9"
VICTIM = "127.0.0.77"


def ua(mac: str) -> str:
    return "Yealink SIP-T46S 66.86.0.15 " + ":".join(mac[i:i + 2] for i in range(0, 12, 2))


def write_inventory(path: Path, n: int, port: int) -> list[str]:
    macs = [f"{OUI}{0x100000 + i:06x}" for i in range(n)]
    lines = [
        "defaults:",
        f"  provisioning_url: https://127.0.0.1:{port}/p/",
        "  registrar: {host: sip.bench.invalid}",
        "security: {ban_after: 10, window: 600, ban_seconds: 900}",
        "sites:",
        "  bench: {networks: [127.0.0.0/24]}",
        "devices:",
    ]
    for i, mac in enumerate(macs):
        lines.append(f"  - {{mac: '{mac}', vendor: yealink, model: T46S, site: bench, "
                     f"lines: [{{extension: '{1000 + i}', display_name: 'Phone {i}'}}]}}")
    path.write_text("\n".join(lines) + "\n")
    return macs


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phone_source(i: int) -> str:
    return f"127.0.0.{10 + i % 200}"


# ---- a phone ------------------------------------------------------------------------------------------

def _digest(www: str, user: str, password: str, uri: str) -> str:
    nonce = re.search(r'nonce="([^"]+)"', www).group(1)
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    cnonce = secrets.token_hex(8)
    resp = md5(f"{md5(f'{user}:provisioner:{password}')}:{nonce}:00000001:{cnonce}:auth:{md5(f'GET:{uri}')}")
    return (f'Digest username="{user}", realm="provisioner", nonce="{nonce}", uri="{uri}", response="{resp}", '
            f'qop=auth, nc=00000001, cnonce="{cnonce}", algorithm=MD5')


def _get(port: int, ctx, source: str, path: str, headers: dict) -> tuple[int | str, dict, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__, {}, b""
    finally:
        conn.close()


def fetch(port: int, ctx, mac: str, source: str, password: str | None) -> tuple[int | str, bytes]:
    """A phone's fetch on a new connection: anonymous; with a password, the 401 then the digest retry."""
    path = f"/p/{mac}.cfg"
    status, headers, body = _get(port, ctx, source, path, {"User-Agent": ua(mac)})
    if status != 401 or password is None:
        return status, body
    status, _, body = _get(port, ctx, source, path, {"User-Agent": ua(mac), "Authorization": _digest(
        headers.get("www-authenticate", 'nonce="x"'), mac, password, path)})
    return status, body


def tftp_get(port: int, name: str, source: str, timeout: float = 2.0, tries: int = 3) -> bool:
    """A phone's TFTP read (RFC 1350, 512-byte blocks): repeats its RRQ when no answer comes."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.settimeout(timeout)
    try:
        rrq = b"\x00\x01" + name.encode() + b"\x00octet\x00"
        for _ in range(tries):
            s.sendto(rrq, ("127.0.0.1", port))
            try:
                pkt, peer = s.recvfrom(65536)
            except socket.timeout:
                continue
            block, data = 1, b""
            while True:
                if pkt[:2] != b"\x00\x03" or int.from_bytes(pkt[2:4], "big") != block:
                    return False
                data += pkt[4:]
                s.sendto(b"\x00\x04" + pkt[2:4], peer)
                if len(pkt) - 4 < 512:
                    return data.startswith(b"#!version")
                block += 1
                pkt, _ = s.recvfrom(65536)
        return False
    except OSError:
        return False
    finally:
        s.close()


def phones(args) -> dict:
    """Phones enrol, then fetch again and again with digest until `seconds` have passed."""
    port, tftp_port, ca, macs, seconds, idx, pw = args
    ctx = ssl.create_default_context(cafile=ca)
    seen, times, tftp = Counter(), [], Counter()
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        mac = macs[i % len(macs)]
        source = phone_source(idx * 1000 + i)
        t = time.monotonic()
        status, body = fetch(port, ctx, mac, source, pw.get(mac))
        times.append(time.monotonic() - t)
        if status == 200 and mac not in pw:
            m = re.search(rb"static\.auto_provision\.server\.password = (\S+)", body)
            if m:
                pw[mac] = m.group(1).decode()
        seen[str(status)] += 1
        seen["config"] += status == 200 and b"account.1.password" in body
        if tftp_port and i % 5 == 0:
            tftp["ok" if tftp_get(tftp_port, f"{mac}.cfg", source) else "failed"] += 1
        i += 1
    return {"seen": seen, "times": times, "tftp": tftp, "pw": pw}


# ---- attackers ------------------------------------------------------------------------------------------

def scanner(args) -> dict:
    idx, port, ca, seconds = args
    rnd = random.Random(idx)
    ctx = ssl.create_default_context(cafile=ca)
    counts = Counter()
    conn = None
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        if conn is None or i % 50 == 0:  # hop to a new source address now and then, as a botnet would
            if conn:
                conn.close()
            src = f"127.2.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10, source_address=(src, 0))
            counts["sources"] += 1
        mac = f"{OUI}{rnd.randrange(1 << 24):06x}"
        i += 1
        try:
            conn.request("GET", f"/p/{mac}.cfg", headers={"User-Agent": ua(mac)})
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = None
            counts["error"] += 1
            continue
        counts[str(r.status)] += 1
        counts["leak"] += r.status == 200 and b"password" in body
    if conn:
        conn.close()
    counts["sent"] = i
    return counts


HELD_REQUEST = b"GET /p/805ec0100000.cfg HTTP/1.1\r\nHost: x\r\nUser-Agent: x\r\nContent-Length: 1000\r\n\r\n"


def holder(args) -> dict:
    """Holds up to `count` connections open, each with a body that never comes; reopens closed ones."""
    port, ca, count, seconds = args
    ctx = ssl.create_default_context(cafile=ca)
    sel = selectors.DefaultSelector()
    live: dict[ssl.SSLSocket, float] = {}
    stats = Counter()
    deadline = time.monotonic() + seconds
    most = 0
    while time.monotonic() < deadline:
        tick = time.monotonic()
        while len(live) < count and time.monotonic() - tick < 0.2:  # at most ~400 new connections a second
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(ATTACKER, 0))
                s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                s.sendall(HELD_REQUEST)
                s.setblocking(False)
            except OSError:
                stats["connect failed"] += 1
                time.sleep(0.0025)
                continue
            live[s] = time.monotonic()
            sel.register(s, selectors.EVENT_READ)
            stats["opened"] += 1
            time.sleep(0.0025)
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except ssl.SSLWantReadError:
                continue
            except OSError:
                data = b""
            head = data[:12]
            stats["answered " + head.decode(errors="replace")[9:12] if head.startswith(b"HTTP/1.1") else "closed"] += 1
            stats["cut off after >= 1 s" if time.monotonic() - live[s] >= 1.0 else "refused at once"] += 1
            sel.unregister(s)
            s.close()
            del live[s]
        most = max(most, len(live))
    stats["held at the end"] = len(live)
    stats["most held at once"] = most
    for s in list(live):
        s.close()
    return stats


def udp_packet(src: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                       socket.inet_aton(src), socket.inet_aton("127.0.0.1")) + udp


def forger(args) -> dict:
    """Forged RRQs: phones' addresses, the victim's (on its listening ports), and 3,000 other addresses."""
    port, seconds, rate, victim_ports, phone_ips = args
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    rnd = random.Random(7)
    stats = Counter()
    deadline = time.monotonic() + seconds
    step = max(1, rate // 50)
    while time.monotonic() < deadline:
        t = time.monotonic()
        for _ in range(step):
            mac = f"{OUI}{rnd.randrange(1 << 24):06x}"
            kind = rnd.random()
            if kind < 0.45:  # failures in a phone's name: must never ban its HTTPS
                src, sport, name = rnd.choice(phone_ips), rnd.randrange(20000, 60000), f"nothing-{mac}.bin"
            elif kind < 0.9:  # answers reflected to the victim
                src, sport, name = VICTIM, rnd.choice(victim_ports), f"{mac}.cfg"
            else:  # a spread: descriptors held by transfers nobody acknowledges
                src, sport, name = f"127.3.{rnd.randrange(12)}.{rnd.randrange(1, 251)}", rnd.randrange(20000, 60000), f"{mac}.cfg"
            payload = b"\x00\x01" + name.encode() + b"\x00octet\x00"
            raw.sendto(udp_packet(src, sport, port, payload), ("127.0.0.1", 0))
            stats["sent"] += 1
            if src == VICTIM:
                stats["victim bytes sent"] += len(payload)
        time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))
    raw.close()
    return stats


class Victim:
    """Listens where forged requests say they came from, and counts what the server sends there."""

    def __init__(self, n: int):
        self.socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((VICTIM, 0))
            s.setblocking(False)
            self.socks.append(s)
        self.ports = [s.getsockname()[1] for s in self.socks]
        self.bytes = self.datagrams = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        for s in self.socks:
            self._sel.register(s, selectors.EVENT_READ)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.2):
                try:
                    self.bytes += len(key.fileobj.recv(65536))
                    self.datagrams += 1
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._t.join(timeout=5)
        for s in self.socks:
            s.close()


# ---- running it -----------------------------------------------------------------------------------------

def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def report(title: str, phone_res: list[dict], attacker: dict, extra: dict) -> None:
    seen = Counter()
    times: list[float] = []
    tftp = Counter()
    for r in phone_res:
        seen.update(r["seen"])
        times += r["times"]
        tftp.update(r["tftp"])
    total = sum(v for k, v in seen.items() if k != "config")
    times.sort()
    pct = lambda p: times[min(len(times) - 1, int(p * len(times)))] if times else float("nan")  # noqa: E731
    print(f"\n== {title}")
    print(f"  phones: {total:,} fetches, answers " + ", ".join(f"{k}: {v:,}" for k, v in sorted(seen.items())
                                                              if k != "config"))
    print(f"  phones got their config: {seen['config']:,} of {total:,} ({100 * seen['config'] / max(1, total):.1f} %); "
          f"time per fetch median {1000 * pct(0.5):.0f} ms, 99th percentile {1000 * pct(0.99):.0f} ms")
    if tftp:
        print(f"  phones' TFTP bootstrap: {tftp['ok']:,} of {tftp['ok'] + tftp['failed']:,} fetched")
    print("  attacker: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(attacker.items())))
    for k, v in extra.items():
        print(f"  {k}: {v}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attack", default="guess,held,tftp", help="comma-separated: guess, held, tftp")
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--phones", type=int, default=2, help="phone processes")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the phones fetch during each attack")
    ap.add_argument("--ramp", type=float, default=10.0, help="seconds the attack runs before the phones start")
    ap.add_argument("--held", type=int, default=4000)
    ap.add_argument("--holders", type=int, default=4, help="attacker processes for the held attack")
    ap.add_argument("--scanners", type=int, default=2)
    ap.add_argument("--forged-rate", type=int, default=2000)
    ap.add_argument("--tree", type=Path, default=REPO, help="the provisioner source tree to serve from")
    a = ap.parse_args()
    attacks = [x.strip() for x in a.attack.split(",") if x.strip()]
    if "tftp" in attacks and os.geteuid() != 0:
        print("tftp: skipped (forging source addresses needs a raw socket: run as root)")
        attacks.remove("tftp")
    work = Path(tempfile.mkdtemp(prefix="prov-attack-"))
    port, tftp_port = free_port(), free_port(socket.SOCK_DGRAM)
    macs = write_inventory(work / "inventory.yaml", a.devices, port)
    log = open(work / "serve.log", "w")
    srv = subprocess.Popen([sys.executable, "-m", "provisioner", "--home", str(work / "home"), "--inventory",
                            str(work / "inventory.yaml"), "serve", "--https", f"127.0.0.1:{port}", "--tftp",
                            f"127.0.0.1:{tftp_port}"], stdout=log, stderr=subprocess.STDOUT, cwd=a.tree,
                           env={**os.environ, "PYTHONPATH": str(a.tree)})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if srv.poll() is not None:
                print((work / "serve.log").read_text()[-2000:])
                return 1
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        ca = str(work / "home" / "tls" / "ca.pem")
        print(f"server from {a.tree} up with {a.devices} devices; phones fetch {a.seconds:g} s during each "
              f"attack, {a.phones} processes, new TLS connection per fetch; the attack starts {a.ramp:g} s before")
        chunks = [macs[i::a.phones] for i in range(a.phones)]
        leaks = 0
        with mp.Pool(a.phones + max(a.holders, a.scanners, 1)) as pool:
            pws: list[dict] = [{} for _ in chunks]  # what each phone holds once enrolled, across the runs
            quiet = pool.map(phones, [(port, tftp_port, ca, c, min(5.0, a.seconds), i, pws[i])
                                      for i, c in enumerate(chunks)])
            pws = [r["pw"] for r in quiet]
            report("no attack (baseline, 5 s)", quiet, {}, {"server descriptors": fds(srv.pid)})
            for attack in attacks:
                peak = [fds(srv.pid)]
                stop = threading.Event()

                def sample():
                    while not stop.wait(0.5):
                        peak.append(fds(srv.pid))
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                victim = Victim(500) if attack == "tftp" else None
                span = a.ramp + a.seconds
                if attack == "guess":
                    job = pool.map_async(scanner, [(i, port, ca, span) for i in range(a.scanners)])
                elif attack == "held":
                    job = pool.map_async(holder, [(port, ca, a.held // a.holders, span) for _ in range(a.holders)])
                else:
                    phone_ips = [phone_source(i) for i in range(200)]
                    job = pool.map_async(forger, [(tftp_port, span, a.forged_rate, victim.ports, phone_ips)])
                time.sleep(a.ramp)
                res = pool.map(phones, [(port, tftp_port if attack == "tftp" else 0, ca, c, a.seconds, i, pws[i])
                                        for i, c in enumerate(chunks)])
                pws = [r["pw"] for r in res]
                attacker = Counter()
                for r in job.get(timeout=span + 120):
                    attacker.update(r)
                if attack == "tftp":
                    time.sleep(6)  # what is still retransmitted after the last forged request
                stop.set()
                sampler.join()
                extra = {"server descriptors": f"{peak[0]} before, at most {max(peak)} during"}
                if victim is not None:
                    victim.close()
                    sent = max(1, attacker["victim bytes sent"])
                    extra["reflected to the victim"] = (
                        f"{victim.datagrams:,} datagrams, {victim.bytes:,} bytes ({victim.bytes / (span + 6):,.0f} "
                        f"bytes/s) for {sent:,} bytes of forged requests: {victim.bytes / sent:.2f}x")
                title = {"guess": "MAC guessing from many sources outside the site",
                         "held": f"{a.held:,} held request bodies from one address ({ATTACKER})",
                         "tftp": f"forged TFTP requests, {a.forged_rate:,}/s"}[attack]
                report(title, res, attacker, extra)
                leaks += attacker.get("leak", 0)
        return 0 if leaks == 0 else 1
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
