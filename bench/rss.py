#!/usr/bin/env python3
"""Memory of `provisioner serve` with a large inventory (goal: <= 300 MB resident with 100,000 devices).

An inventory of N Yealink T46S (one line each, one site) is written to a temp dir; `provisioner serve`
(HTTPS and TFTP on loopback ports) starts on it. The first start syncs every device into a fresh SQLite
store (credentials generated and sealed, desired config rendered and hashed); once the HTTPS port
answers (bounded wait) and one config has been fetched, VmRSS and VmHWM (the peak) are read from
/proc/<pid>/status. Then the server is stopped and started again on the same store (nothing to sync)
and measured the same way.

    .venv/bin/python bench/rss.py [--devices 100000] [--no-restart]
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot_storm import exit_on_sigterm, free_port, ua, wait_port  # noqa: E402

GOAL_MB = 300


def write_inventory(path: Path, macs: list[str], https_port: int) -> None:
    with path.open("w") as f:
        f.write("defaults:\n"
                f"  provisioning_url: https://127.0.0.1:{https_port}/p/\n"
                "  registrar: {host: sip.bench.invalid}\n"
                "sites:\n  bench: {networks: [127.0.0.0/8]}\n"
                "devices:\n")
        for i, m in enumerate(macs):
            f.write(f"  - {{mac: '{m}', vendor: yealink, model: T46S, site: bench, "
                    f"lines: [{{extension: '{100000 + i}', display_name: 'Phone {i}'}}]}}\n")


def status_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) / 1024
    return out


def start_and_measure(work: Path, port: int, tport: int, mac: str, limit: float, log) -> dict:
    t = time.monotonic()
    logf = open(work / "serve.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner", "--home", str(work / "home"), "--inventory", str(work / "inventory.yaml"),
         "serve", "--https", f"127.0.0.1:{port}", "--tftp", f"127.0.0.1:{tport}"],
        stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    try:
        wait_port(port, proc, "provisioner serve", limit)
        up = time.monotonic() - t
        # one real fetch (enrolment of the first device), so the request path is loaded too
        ctx = ssl.create_default_context(cafile=str(work / "home" / "tls" / "ca.pem"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        conn.request("GET", f"/p/{mac}.cfg", headers={"User-Agent": ua(mac)})
        status = conn.getresponse().status
        conn.close()
        time.sleep(2)  # let the event recorder and the inventory watcher settle
        mem = status_mb(proc.pid)
        log(f"  serve up in {up:.1f} s, fetch {status}, VmRSS {mem['VmRSS']:.0f} MB, peak {mem['VmHWM']:.0f} MB")
        return {"startup_s": up, "rss_mb": mem["VmRSS"], "peak_mb": mem["VmHWM"], "fetch_status": status}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        logf.close()


def run(devices: int = 100_000, restart: bool = True, limit: float = 900, log=print) -> dict:
    work = Path(tempfile.mkdtemp(prefix="prov-rss-"))
    try:
        port, tport = free_port(), free_port()
        macs = [f"805ec0{0x400000 + i:06x}" for i in range(devices)]
        write_inventory(work / "inventory.yaml", macs, port)
        log(f"  inventory: {devices:,} devices, {(work / 'inventory.yaml').stat().st_size / 2**20:.1f} MB")
        out = {"devices": devices, "first": start_and_measure(work, port, tport, macs[0], limit, log)}
        if restart:
            out["restart"] = start_and_measure(work, port, tport, macs[1], limit, log)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--no-restart", action="store_true", help="measure the first start only")
    ap.add_argument("--limit", type=float, default=900, help="seconds to wait for serve to listen")
    a = ap.parse_args()
    exit_on_sigterm()
    r = run(a.devices, not a.no_restart, a.limit)
    for k in ("first", "restart"):
        if k in r:
            m = r[k]
            print(f"serve, {r['devices']:,} devices, {k} start: VmRSS {m['rss_mb']:.0f} MB (peak {m['peak_mb']:.0f} MB), "
                  f"up in {m['startup_s']:.0f} s; goal <= {GOAL_MB} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
