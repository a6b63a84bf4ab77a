#!/usr/bin/env python3
"""TFTP: provisioner's server (provisioner/serve/tftp.py) against tftpd-hpa, same files, same client, same run.

Files, byte for byte the same on both servers:
  2 KB   each phone asks for its own `<mac>.cfg` and gets the secret-free TFTP bootstrap. For the bench the
         bootstrap template (a copy of templates/, PROVISIONER_TEMPLATES) is padded with a comment line to
         2,048 bytes; provisioner answers it through its whole request pipeline (identify the file and the
         device, site policy, render or cache, record the fetch). tftpd-hpa gets one 2,048-byte file under
         every `<mac>.cfg` name (hard links).
  64 KB  every phone asks for the same `fw64k.rom`, a firmware-sized common file: a bench copy of the Yealink
         profile (PROVISIONER_VENDORS) lists it as a secret-free common file whose template renders 65,536
         bytes; provisioner answers it through the same pipeline (common file, cached render). tftpd-hpa
         serves the same bytes from disk.
Two clients, each the same for both servers; every received file is compared with the expected bytes:
  in-process  worker processes, each keeping several transfers in flight on non-blocking UDP sockets
              (plain RFC 1350 RRQ, 512-byte blocks unless --blksize): measures the servers, not process starts;
  tftp-hpa    `tftp -m binary ... -c get`, a process per transfer, several at a time (512-byte blocks).
Each size runs --rounds times per server, the servers taking turns; the best round counts (the machine
may be shared). tftpd-hpa (`in.tftpd --foreground --address 127.0.0.1:PORT --secure --user tftp`, a
process per transfer) runs as a foreground process on a loopback port; nothing leaves 127.0.0.1.

    .venv/bin/python bench/tftp.py [--devices 2000] [--transfers 2000] [--concurrency 32] [--rounds 3]
                                   [--hpa 1000,300,16]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot_storm import exit_on_sigterm, free_port, worker_signals  # noqa: E402

SMALL, BIG = 2048, 65536
BIG_NAME = "fw64k.rom"
HEADER = "#!version:1.0.0.1\n"
RRQ, DATA, ACK, ERROR, OACK = 1, 3, 4, 5, 6
RETRANSMIT = 1.0  # seconds without a packet before the client resends its last packet
RETRIES = 5


# ---- client ----------------------------------------------------------------------------------------------

class _Transfer:
    __slots__ = ("name", "sock", "server", "tid", "block", "chunks", "last", "at", "tries", "blksize")

    def __init__(self, name: str, server: tuple[str, int], blksize: int | None):
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.server = server
        self.tid = None
        self.block = 1
        self.chunks: list[bytes] = []
        self.blksize = 512
        req = struct.pack("!H", RRQ) + name.encode() + b"\0octet\0"
        if blksize:
            req += b"blksize\0" + str(blksize).encode() + b"\0"
        self.last = req
        self.tries = 0
        self.sock.sendto(req, server)
        self.at = time.monotonic()


def fetch_many(args) -> tuple[int, int, float]:
    """Fetch `names` from 127.0.0.1:port, `inflight` at a time; returns (ok, failed, seconds)."""
    port, names, expect, inflight, blksize, deadline = args
    server = ("127.0.0.1", port)
    sel = selectors.DefaultSelector()
    todo = list(reversed(names))
    ok = bad = 0
    t0 = time.monotonic()

    def finish(t: _Transfer, good: bool):
        nonlocal ok, bad
        sel.unregister(t.sock)
        t.sock.close()
        if good and hashlib.sha256(b"".join(t.chunks)).digest() == expect[t.name]:
            ok += 1
        else:
            bad += 1

    def start():
        t = _Transfer(todo.pop(), server, blksize)
        sel.register(t.sock, selectors.EVENT_READ, t)

    for _ in range(min(inflight, len(todo))):
        start()
    while sel.get_map():
        now = time.monotonic()
        if now > deadline:  # the whole run is bounded: what is still in flight counts as failed
            for key in list(sel.get_map().values()):
                finish(key.data, False)
            bad += len(todo)
            todo.clear()
            break
        for key, _ in sel.select(timeout=0.2):
            t: _Transfer = key.data
            try:
                pkt, addr = t.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # ICMP port unreachable and the like
                finish(t, False)
                if todo:
                    start()
                continue
            if t.tid is None:
                t.tid = addr
            elif addr != t.tid:
                continue
            op = struct.unpack_from("!H", pkt)[0] if len(pkt) >= 2 else 0
            if op == OACK:
                opts = pkt[2:].split(b"\0")
                o = dict(zip(opts[::2], opts[1::2]))
                t.blksize = int(o.get(b"blksize", 512))
                t.last = struct.pack("!HH", ACK, 0)
            elif op == DATA and len(pkt) >= 4:
                block = struct.unpack_from("!H", pkt, 2)[0]
                if block == t.block & 0xFFFF:
                    t.chunks.append(pkt[4:])
                    t.block += 1
                    t.last = struct.pack("!HH", ACK, block)
                    if len(pkt) - 4 < t.blksize:
                        t.sock.sendto(t.last, t.tid)  # the final ACK; the transfer is complete
                        finish(t, True)
                        if todo:
                            start()
                        continue
                elif block != (t.block - 1) & 0xFFFF:
                    continue
            else:  # ERROR or garbage
                finish(t, False)
                if todo:
                    start()
                continue
            t.sock.sendto(t.last, t.tid)
            t.at, t.tries = time.monotonic(), 0
        now = time.monotonic()
        for key in list(sel.get_map().values()):
            t = key.data
            if now - t.at > RETRANSMIT:
                t.tries += 1
                if t.tries > RETRIES:
                    finish(t, False)
                    if todo:
                        start()
                    continue
                t.sock.sendto(t.last, t.tid or t.server)
                t.at = now
    sel.close()
    return ok, bad, time.monotonic() - t0


def cpu_seconds(pid: int) -> float:
    """CPU time of a server so far: itself, its children that ended (in.tftpd forks one per transfer) and
    those still running."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = sum(int(x) for x in f[11:15]) / tick
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += cpu_seconds(int(child))
        return total
    except (OSError, IndexError, ValueError):
        return 0.0


def load(port: int, names: list[str], expect: dict[str, bytes], concurrency: int, procs: int,
         blksize: int | None, server_pid: int | None, limit: float) -> dict:
    """All `names` fetched by `procs` client processes with `concurrency` transfers in flight in all."""
    per = max(1, concurrency // procs)
    chunks = [names[i::procs] for i in range(procs)]
    with mp.Pool(procs, initializer=worker_signals) as pool:
        cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        t0 = time.monotonic()
        deadline = t0 + limit
        res = pool.map(fetch_many, [(port, c, expect, per, blksize, deadline) for c in chunks])
        dt = time.monotonic() - t0
        cpu = (cpu_seconds(server_pid) - cpu0) if server_pid else 0.0
    ok, bad = sum(r[0] for r in res), sum(r[1] for r in res)
    return {"rate": ok / dt, "ok": ok, "failed": bad, "seconds": dt, "server_cpu": cpu / dt}


def load_hpa(port: int, names: list[str], data: bytes, concurrency: int, out: Path, server_pid: int | None,
             limit: float) -> dict:
    """All `names` fetched by tftp-hpa client processes, `concurrency` at a time (process start-up included:
    the same for both servers). The client exits 0 even on errors, so every file is compared."""
    from concurrent.futures import ThreadPoolExecutor

    out.mkdir(exist_ok=True)
    deadline = time.monotonic() + limit

    def one(i_name):
        i, name = i_name
        dest = out / f"{i}.out"
        if time.monotonic() > deadline:
            return False
        try:
            subprocess.run(["tftp", "-m", "binary", "127.0.0.1", str(port), "-c", "get", name, str(dest)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            good = dest.read_bytes() == data
        except (OSError, subprocess.TimeoutExpired):
            good = False
        dest.unlink(missing_ok=True)
        return good

    with ThreadPoolExecutor(concurrency) as pool:
        cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        t0 = time.monotonic()
        res = list(pool.map(one, enumerate(names)))
        dt = time.monotonic() - t0
        cpu = (cpu_seconds(server_pid) - cpu0) if server_pid else 0.0
    ok = sum(res)
    return {"rate": ok / dt, "ok": ok, "failed": len(res) - ok, "seconds": dt, "server_cpu": cpu / dt}


def probe(port: int, name: str, limit: float, proc: subprocess.Popen | None = None) -> bytes:
    """One transfer, retried until it succeeds or `limit` seconds pass (servers starting up)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"TFTP server on port {port} exited with {proc.returncode}")
        got = {}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.5)
            s.sendto(struct.pack("!H", RRQ) + name.encode() + b"\0octet\0", ("127.0.0.1", port))
            block, data = 1, []
            try:
                while True:
                    pkt, addr = s.recvfrom(65536)
                    if struct.unpack_from("!H", pkt)[0] == ERROR:
                        raise SystemExit(f"TFTP server on port {port} refused {name}: {pkt[4:-1].decode(errors='replace')}")
                    if struct.unpack_from("!H", pkt)[0] != DATA:
                        break
                    if struct.unpack_from("!H", pkt, 2)[0] == block:
                        data.append(pkt[4:])
                        block += 1
                    s.sendto(struct.pack("!HH", ACK, block - 1), addr)
                    if len(pkt) - 4 < 512:
                        got["data"] = b"".join(data)
                        break
            except OSError:
                pass
        if "data" in got:
            return got["data"]
        time.sleep(0.2)
    raise SystemExit(f"no TFTP answer for {name} on port {port} within {limit:.0f} s")


# ---- the two servers -------------------------------------------------------------------------------------

def bench_profiles(work: Path) -> dict[str, str]:
    """Copies of vendors/ and templates/ with the two bench files; returns the environment to use them."""
    vend, tmpl = work / "vendors", work / "templates"
    shutil.copytree(REPO / "vendors", vend)
    shutil.copytree(REPO / "templates", tmpl)
    (tmpl / "bench").mkdir()
    # 2 KB: the real bootstrap, then one comment line that brings it to 2,048 bytes
    (tmpl / "bench" / "bootstrap2k.cfg.j2").write_text(
        '{% set b %}{% include "yealink/bootstrap.cfg.j2" %}{% endset %}{% include "yealink/bootstrap.cfg.j2" %}'
        '## {{ "-" * (SIZE - 4 - b|length) }}\n'.replace("SIZE", str(SMALL)))
    # 64 KB: a firmware-sized secret-free common file of key = value lines, exactly 65,536 bytes
    line = "bench.firmware.blob.{:05d} = " + "0123456789abcdef" * 3 + "\n"
    body = HEADER + "".join(line.format(i) for i in range((BIG - len(HEADER)) // len(line.format(0))))
    body += "## " + "-" * (BIG - len(body) - 4) + "\n"
    assert len(body) == BIG
    (tmpl / "bench" / "fw64k.cfg.j2").write_text(body)
    y = (vend / "yealink.yaml").read_text()
    y = y.replace("tftp_template: yealink/bootstrap.cfg.j2", "tftp_template: bench/bootstrap2k.cfg.j2")
    y = y.replace("files:\n", f"files:\n  - {{name: {BIG_NAME}, template: bench/fw64k.cfg.j2, "
                              f"tftp_template: bench/fw64k.cfg.j2}}\n", 1)
    (vend / "yealink.yaml").write_text(y)
    return {"PROVISIONER_VENDORS": str(vend), "PROVISIONER_TEMPLATES": str(tmpl)}


def write_inventory(path: Path, macs: list[str], https_port: int, tftp_port: int) -> None:
    lines = ["defaults:", f"  provisioning_url: https://127.0.0.1:{https_port}/p/",
             f"  tftp_url: tftp://127.0.0.1:{tftp_port}/", "  registrar: {host: sip.bench.invalid}",
             "sites:", "  bench: {networks: [127.0.0.0/8]}", "devices:"]
    lines += [f"  - {{mac: '{m}', vendor: yealink, model: T46S, site: bench, "
              f"lines: [{{extension: '{2000 + i}', display_name: 'Phone {i}'}}]}}" for i, m in enumerate(macs)]
    path.write_text("\n".join(lines) + "\n")


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    """Signal the process group of a server started with start_new_session=True (its pgid is its pid)."""
    if p.poll() is not None:  # already reaped: its pid may belong to someone else now
        return
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Servers:
    """provisioner serve (HTTPS + TFTP) and in.tftpd on loopback ports; stop() ends exactly these processes."""

    def __init__(self, devices: int, log=print):
        self.work = Path(tempfile.mkdtemp(prefix="prov-tftp-"))
        self.procs: list[subprocess.Popen] = []
        self.log = log
        self.macs = [f"805ec0{0x300000 + i:06x}" for i in range(devices)]

    def start(self) -> None:
        w = self.work
        https, self.prov_port, self.hpa_port = free_port(), free_port(), free_port()
        env = {**os.environ, **bench_profiles(w)}
        write_inventory(w / "inventory.yaml", self.macs, https, self.prov_port)
        t = time.monotonic()
        log = open(w / "serve.log", "w")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "provisioner", "--home", str(w / "home"), "--inventory", str(w / "inventory.yaml"),
             "serve", "--https", f"127.0.0.1:{https}", "--tftp", f"127.0.0.1:{self.prov_port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True))
        self.prov = self.procs[-1]
        small = probe(self.prov_port, f"{self.macs[0]}.cfg", 600, self.prov)
        big = probe(self.prov_port, BIG_NAME, 30, self.prov)
        if (len(small), len(big)) != (SMALL, BIG):
            raise SystemExit(f"provisioner answered {len(small)} / {len(big)} bytes, expected {SMALL} / {BIG}")
        self.small, self.big = small, big
        self.log(f"  provisioner up with {len(self.macs)} devices in {time.monotonic() - t:.1f} s "
                 f"(bootstrap {len(self.small):,} B, {BIG_NAME} {len(self.big):,} B)")

        root = w / "tftproot"
        root.mkdir()
        (root / BIG_NAME).write_bytes(self.big)
        first = root / f"{self.macs[0]}.cfg"
        first.write_bytes(self.small)
        for m in self.macs[1:]:
            os.link(first, root / f"{m}.cfg")
        os.chmod(w, 0o755)
        os.chmod(root, 0o755)
        for p in (first, root / BIG_NAME):
            os.chmod(p, 0o644)
        self.procs.append(subprocess.Popen(
            ["in.tftpd", "--foreground", "--address", f"127.0.0.1:{self.hpa_port}", "--secure", "--user", "tftp",
             str(root)], stdout=subprocess.DEVNULL, stderr=open(w / "tftpd.log", "w"), start_new_session=True))
        self.hpa = self.procs[-1]
        if probe(self.hpa_port, BIG_NAME, 30, self.hpa) != self.big:
            raise SystemExit("tftpd-hpa answered other bytes than provisioner")

    def stop(self) -> None:
        for p in reversed(self.procs):  # each in its own process group: in.tftpd's per-transfer children too
            _signal_group(p, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(timeout=5)
        shutil.rmtree(self.work, ignore_errors=True)


CLIENTS = {"raw": "in-process client", "hpa": "tftp-hpa client"}


def run(devices: int = 2000, transfers: int = 2000, big_transfers: int | None = None, concurrency: int = 32,
        procs: int = 2, blksize: int | None = None, rounds: int = 3, limit: float = 300, log=print,
        hpa: tuple[int, int, int] | None = None) -> list[dict]:
    """Both files on both servers, `rounds` times, the servers taking turns; returns one row per client and
    file size with each server's best round (and the errors of every round). `hpa`: also (2 KB transfers,
    64 KB transfers, processes at a time) with the tftp-hpa client."""
    if not shutil.which("in.tftpd"):
        raise SystemExit("in.tftpd is needed (apt-get install tftpd-hpa)")
    if hpa and not shutil.which("tftp"):
        raise SystemExit("the tftp client is needed (apt-get install tftp-hpa)")
    big_transfers = big_transfers or transfers
    srv = Servers(devices, log)
    rows = []
    try:
        srv.start()

        def small(n):
            return [f"{srv.macs[i % len(srv.macs)]}.cfg" for i in range(n)]
        cases = [("raw", "2 KB", small(transfers), srv.small, concurrency),
                 ("raw", "64 KB", [BIG_NAME] * big_transfers, srv.big, concurrency)]
        if hpa:
            cases += [("hpa", "2 KB", small(hpa[0]), srv.small, hpa[2]),
                      ("hpa", "64 KB", [BIG_NAME] * hpa[1], srv.big, hpa[2])]
        for client, label, names, data, conc in cases:
            expect = {n: hashlib.sha256(data).digest() for n in set(names)}
            runs: dict[str, list[dict]] = {"provisioner": [], "tftpd-hpa": []}
            for _ in range(rounds):
                for who, port, proc in (("provisioner", srv.prov_port, srv.prov),
                                        ("tftpd-hpa", srv.hpa_port, srv.hpa)):
                    if client == "raw":
                        r = load(port, names, expect, conc, procs, blksize, proc.pid, limit)
                    else:
                        r = load_hpa(port, names, data, conc, srv.work / "out", proc.pid, limit)
                    runs[who].append(r)
                    cpu = f"server CPU {100 * r['server_cpu']:.0f}% of a core" if who == "provisioner" else \
                        "(a process per transfer)"
                    log(f"  {label} {CLIENTS[client]:17} {who:12} {r['rate']:7,.0f} transfers/s  "
                        f"{r['ok']}/{len(names)} ok  {r['failed']} failed  {r['seconds']:.1f} s  {cpu}")
            best = {who: dict(max(rs, key=lambda r: r["rate"]), failed=sum(r["failed"] for r in rs))
                    for who, rs in runs.items()}
            rows.append({"client": client, "size": label, "bytes": len(data), "transfers": len(names),
                         "concurrency": conc, "rounds": rounds, "ours": best["provisioner"], "ref": best["tftpd-hpa"]})
    finally:
        srv.stop()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2000, help="devices in the inventory (2 KB: one <mac>.cfg each)")
    ap.add_argument("--transfers", type=int, default=2000, help="transfers per server and file size")
    ap.add_argument("--big-transfers", type=int, default=None, help="64 KB transfers (default: --transfers)")
    ap.add_argument("--concurrency", type=int, default=32, help="transfers in flight, all client processes together")
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--blksize", type=int, default=None, help="ask for this block size (RFC 2348); default 512")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per server and size; the best one counts")
    ap.add_argument("--hpa", default="1000,300,16", help="tftp-hpa client: 2 KB transfers, 64 KB transfers, "
                                                     "processes at a time ('' to skip)")
    a = ap.parse_args()
    exit_on_sigterm()
    hpa = tuple(int(x) for x in a.hpa.split(",")) if a.hpa else None
    rows = run(a.devices, a.transfers, a.big_transfers, a.concurrency, a.procs, a.blksize, a.rounds, hpa=hpa)
    print()
    print(f"{'TFTP (best of ' + str(a.rounds) + ')':44}{'provisioner':>14}{'tftpd-hpa':>14}{'ratio':>8}{'errors':>8}")
    for r in rows:
        o, f = r["ours"], r["ref"]
        what = f"{r['size']} x {r['transfers']}, {CLIENTS[r['client']]}, {r['concurrency']} at a time"
        print(f"{what:44}{o['rate']:>12,.0f}/s{f['rate']:>12,.0f}/s"
              f"{o['rate'] / f['rate']:>8.2f}{o['failed'] + f['failed']:>8}")
    return 0 if all(r["ours"]["failed"] == 0 and r["ref"]["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
