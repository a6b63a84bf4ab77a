#!/usr/bin/env python3
"""MAC-guessing attack against a running server while legitimate phones fetch (issue 8's benchmark).

Starts `provisioner serve` on loopback with N phones in a site on 127.0.0.0/24, then at the same time:
- scanners on many loopback sources outside the site (127.2.x.y) request G guessed per-device files of
  the phones' OUI, with a fitting User-Agent (keep-alive, like a script);
- every phone enrols (first fetch in its window) and then fetches again with HTTP digest.
Prints leaks (scanner requests answered with a config: must be 0), the legitimate success rate, and the
throughput of both. Only loopback; every loop is bounded; the server is stopped at the end.

    .venv/bin/python bench/attack.py [--guesses 100000] [--devices 1000] [--scanners 4]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
OUI = "805ec0"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scanner(args) -> dict:
    idx, port, ca, guesses, known = args
    rnd = random.Random(idx)
    ctx = ssl.create_default_context(cafile=ca)
    counts = {"200": 0, "leak": 0, "other": 0}
    conn = None
    sources = 0
    t0 = time.monotonic()
    for i in range(guesses):
        if conn is None or i % 50 == 0:  # hop to a new source address now and then, as a botnet would
            if conn:
                conn.close()
            sources += 1
            src = f"127.2.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10, source_address=(src, 0))
        mac = rnd.choice(known) if rnd.random() < 0.01 else f"{OUI}{rnd.randrange(1 << 24):06x}"
        try:
            conn.request("GET", f"/p/{mac}.cfg", headers={"User-Agent": ua(mac)})
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = None
            counts["other"] += 1
            continue
        counts[str(r.status)] = counts.get(str(r.status), 0) + 1
        if r.status == 200 and b"password" in body:
            counts["leak"] += 1
    if conn:
        conn.close()
    counts["seconds"] = time.monotonic() - t0
    counts["sources"] = sources
    return counts


def phone(args) -> tuple[int, int]:
    port, ca, macs = args
    ok = fail = 0
    with httpx.Client(verify=ca, timeout=20, transport=httpx.HTTPTransport(verify=ca, local_address="127.0.0.1")) as c:
        for mac in macs:
            url = f"https://127.0.0.1:{port}/p/{mac}.cfg"
            try:
                r = c.get(url, headers={"User-Agent": ua(mac)})
                pw = next(line.split("=", 1)[1].strip() for line in r.text.splitlines()
                          if line.startswith("static.auto_provision.server.password"))
                r2 = c.get(url, headers={"User-Agent": ua(mac)}, auth=httpx.DigestAuth(mac, pw))
                if r.status_code == 200 and r2.status_code == 200 and r2.content == r.content:
                    ok += 1
                else:
                    fail += 1
            except Exception:
                fail += 1
    return ok, fail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guesses", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--scanners", type=int, default=4)
    ap.add_argument("--phones", type=int, default=4)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prov-attack-"))
    port = free_port()
    macs = write_inventory(work / "inventory.yaml", a.devices, port)
    log = open(work / "serve.log", "w")
    t = time.monotonic()
    srv = subprocess.Popen([sys.executable, "-m", "provisioner", "--home", str(work / "home"), "--inventory",
                            str(work / "inventory.yaml"), "serve", "--https", f"127.0.0.1:{port}", "--tftp", ""],
                           stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if srv.poll() is not None:
                print((work / "serve.log").read_text()[-2000:])
                return 1
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        print(f"server up with {a.devices} devices in {time.monotonic() - t:.1f} s")
        ca = str(work / "home" / "tls" / "ca.pem")
        per = a.guesses // a.scanners
        chunks = [macs[i::a.phones] for i in range(a.phones)]
        with mp.Pool(a.scanners + a.phones) as pool:
            t0 = time.monotonic()
            attack = pool.map_async(scanner, [(i, port, ca, per, macs) for i in range(a.scanners)])
            legit = pool.map_async(phone, [(port, ca, c) for c in chunks])
            legit_res = legit.get(timeout=3600)
            t_legit = time.monotonic() - t0
            attack_res = attack.get(timeout=3600)
            t_attack = time.monotonic() - t0
        ok = sum(r[0] for r in legit_res)
        fail = sum(r[1] for r in legit_res)
        total = {}
        for r in attack_res:
            for k, v in r.items():
                if k != "seconds":
                    total[k] = total.get(k, 0) + v
        sent = a.scanners * per
        print()
        print(f"{'':28}{'value':>14}")
        print(f"{'guesses sent':28}{sent:>14,}")
        print(f"{'  from distinct sources':28}{total.get('sources', 0):>14,}")
        print(f"{'  answered 401':28}{total.get('401', 0):>14,}")
        print(f"{'  answered 429/403 (banned)':28}{total.get('429', 0) + total.get('403', 0):>14,}")
        print(f"{'  answered 200':28}{total.get('200', 0):>14,}")
        print(f"{'LEAKS (configs to scanners)':28}{total.get('leak', 0):>14,}")
        print(f"{'attack throughput (req/s)':28}{sent / t_attack:>14,.0f}")
        print(f"{'legitimate phones ok':28}{ok:>10,} / {ok + fail:,} ({100 * ok / max(1, ok + fail):.1f} %)")
        print(f"{'legitimate throughput (phones/s)':33}{(ok + fail) / t_legit:>9,.1f}")
        return 0 if total.get("leak", 0) == 0 else 1
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
