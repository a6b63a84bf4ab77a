#!/usr/bin/env python3
"""Firmware rollout: 200 phones download a 40 MB image at once, from provisioner and from nginx, same run.

A site of N Yealink T46S (default 200) under `firmware: latest-approved`, rollout 100 %, and a 40 MB image in
the library. Every phone fetches its config first (enrolment; the config offers the image, which records the
offer), then all N download the image at the same moment over HTTPS, each as one curl process with the
phone's User-Agent: from `provisioner serve` (identification, checksum check, streaming in 256 KB reads) and
from nginx serving the same file from disk on the same certificate (no checks). Throughput = bytes / wall
time until the last download ended; every download is checked (status 200, full size); one download per
server is hashed against the image.

    .venv/bin/python bench/firmware.py [--phones 200] [--mb 40]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot_storm import cpu_seconds, exit_on_sigterm, free_port, wait_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NGINX_CONF = """daemon off; worker_processes 2; pid {w}/nginx.pid; error_log {w}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {w}/tmp; proxy_temp_path {w}/tmp; fastcgi_temp_path {w}/tmp;
  uwsgi_temp_path {w}/tmp; scgi_temp_path {w}/tmp; sendfile on;
  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
    location /fw/ {{ alias {root}/; }} }} }}
"""


def ua(mac: str) -> str:
    return "Yealink SIP-T46S 66.86.0.15 " + ":".join(mac[i:i + 2] for i in range(0, 12, 2))


def storm(port: int, path: str, ca: str, macs: list[str], size: int, server_pid: int, log=print
          ) -> tuple[float, int, float]:
    """All phones at once, one curl each; (MB/s, failed downloads, server CPU seconds per GB)."""
    url = f"https://127.0.0.1:{port}{path}"
    cpu0 = cpu_seconds([server_pid])
    t0 = time.monotonic()
    procs = [subprocess.Popen(["curl", "-s", "--max-time", "600", "--cacert", ca, "-A", ua(m), "-o", "/dev/null",
                               "-w", "%{http_code} %{size_download}", url], stdout=subprocess.PIPE) for m in macs]
    outs = [p.communicate()[0].decode().split() for p in procs]
    took = time.monotonic() - t0
    cpu = cpu_seconds([server_pid]) - cpu0
    busy = 100 * cpu / took
    bad = sum(1 for o in outs if o != ["200", str(size)])
    log(f"  port {port}: {len(macs)} downloads of {size / 2**20:.0f} MB in {took:.1f} s, server busy {busy:.0f}% "
        f"of one core, {bad} failed")
    return len(macs) * size / 2**20 / took, bad, cpu / (len(macs) * size / 2**30)


def check_one(port: int, path: str, ca: str, mac: str, expect: str) -> None:
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=120)
    conn.request("GET", path, headers={"User-Agent": ua(mac)})
    r = conn.getresponse()
    h = hashlib.sha256()
    while chunk := r.read(1 << 20):
        h.update(chunk)
    conn.close()
    if r.status != 200 or h.hexdigest() != expect:
        raise SystemExit(f"port {port}: the image came back wrong (status {r.status})")


def run(phones: int = 200, mb: int = 40, log=print) -> dict:
    for tool in ("nginx", "curl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed (apt-get install {tool})")
    work = Path(tempfile.mkdtemp(prefix="prov-fw-"))
    procs: list[subprocess.Popen] = []
    try:
        port, nport = free_port(), free_port()
        macs = [f"805ec0{0x300000 + i:06x}" for i in range(phones)]
        lines = ["defaults:", f"  provisioning_url: https://127.0.0.1:{port}/p/",
                 "  registrar: {host: sip.bench.invalid}", "  firmware: {yealink: latest-approved}",
                 "sites:", "  bench: {networks: [127.0.0.0/8]}", "devices:"]
        lines += [f"  - {{mac: '{m}', vendor: yealink, model: T46S, site: bench, "
                  f"lines: [{{extension: '{5000 + i}', display_name: 'Phone {i}'}}]}}" for i, m in enumerate(macs)]
        inv = work / "inventory.yaml"
        inv.write_text("\n".join(lines) + "\n")
        image = work / "T46S(T48S,T42S,T41S)-66.86.0.20.rom"
        rnd = random.Random(40)
        with open(image, "wb") as f:
            for _ in range(mb):
                f.write(rnd.randbytes(2**20))
        size = image.stat().st_size
        expect = hashlib.sha256(image.read_bytes()).hexdigest()
        base = [sys.executable, "-m", "provisioner", "--home", str(work / "home"), "--inventory", str(inv)]
        subprocess.run([*base, "firmware", "add", str(image), "--vendor", "yealink", "--models", "T4xS"], check=True,
                       cwd=REPO, stdout=subprocess.DEVNULL)
        log_file = open(work / "serve.log", "w")
        procs.append(subprocess.Popen([*base, "serve", "--https", f"127.0.0.1:{port}", "--tftp", ""],
                                      stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True))
        wait_port(port, procs[0], "provisioner")
        ca = str(work / "home" / "tls" / "ca.pem")

        # every phone fetches its config: enrolment, and the offer of the image
        ctx = ssl.create_default_context(cafile=ca)
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        path = None
        for m in macs:
            conn.request("GET", f"/p/{m}.cfg", headers={"User-Agent": ua(m)})
            r = conn.getresponse()
            body = r.read()
            hit = re.search(rb"static\.firmware\.url = https://[^/]+(/fw/\S+)", body)
            if r.status != 200 or hit is None:
                raise SystemExit(f"{m}: no firmware offer in its config (status {r.status})")
            path = hit.group(1).decode()
        conn.close()
        log(f"{phones} phones enrolled and offered {path}")

        root = work / "nginx-root" / path.split("/")[2]
        root.mkdir(parents=True)
        shutil.copy(image, root / path.split("/")[3])
        (work / "tmp").mkdir()
        (work / "nginx.conf").write_text(NGINX_CONF.format(w=work, port=nport, cert=work / "home" / "tls" / "server.pem",
                                                           key=work / "home" / "tls" / "server.key",
                                                           root=work / "nginx-root"))
        for p in (work, work / "nginx-root", root, root / path.split("/")[3]):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        procs.append(subprocess.Popen(["nginx", "-p", str(work), "-c", str(work / "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_port(nport, procs[1], "nginx")

        check_one(port, path, ca, macs[0], expect)
        check_one(nport, path, ca, macs[0], expect)
        ours, bad_o, cpu_o = storm(port, path, ca, macs, size, procs[0].pid, log)
        ref, bad_r, cpu_r = storm(nport, path, ca, macs, size, procs[1].pid, log)
        return {"phones": phones, "mb": mb, "ours": ours, "ref": ref, "failed_ours": bad_o, "failed_ref": bad_r,
                "cpu_per_gb_ours": cpu_o, "cpu_per_gb_ref": cpu_r}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if p is procs[0] else signal.SIGQUIT)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phones", type=int, default=200)
    ap.add_argument("--mb", type=int, default=40)
    a = ap.parse_args()
    exit_on_sigterm()
    r = run(a.phones, a.mb)
    print(f"{'firmware, ' + str(a.phones) + ' phones x ' + str(a.mb) + ' MB':34}{'provisioner':>14}{'nginx':>10}"
          f"{'ratio':>8}{'failed':>8}")
    print(f"{'MB/s over HTTPS':34}{r['ours']:>14,.0f}{r['ref']:>10,.0f}{r['ours'] / r['ref']:>8.2f}"
          f"{r['failed_ours'] + r['failed_ref']:>8}")
    print(f"{'server CPU s per GB (lower wins)':34}{r['cpu_per_gb_ours']:>14.2f}{r['cpu_per_gb_ref']:>10.2f}"
          f"{r['cpu_per_gb_ref'] / max(r['cpu_per_gb_ours'], 1e-9):>8.2f}")
    return 1 if r["failed_ours"] or r["failed_ref"] else 0


if __name__ == "__main__":
    sys.exit(main())
