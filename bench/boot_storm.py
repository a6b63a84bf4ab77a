#!/usr/bin/env python3
"""Boot storm: every phone of a site fetches its own config at once, against nginx in the same run.

N Yealink devices (default 2,000) are enrolled first (each first fetch in its window hands the device its
provisioning credentials). Then, measured:
  new connections: each device opens a new TLS connection, asks for its file, gets the 401 challenge and
                   asks again with HTTP digest, like a phone (provisioner); the same file by plain GET on a
                   new TLS connection from nginx serving the files from disk (nginx does no auth);
  keep-alive:      the same requests over connections kept open by each client process.
The client is the same for both servers (worker processes, http.client); it is checked to drive nginx
well above the provisioner, so the ratio measures the servers. Every answer is checked (status 200 and
the body nginx holds for that device).

    .venv/bin/python bench/boot_storm.py [--devices 2000] [--clients 4]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NGINX_CONF = """daemon off; worker_processes 2; pid {w}/nginx.pid; error_log {w}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {w}/tmp; proxy_temp_path {w}/tmp; fastcgi_temp_path {w}/tmp;
  uwsgi_temp_path {w}/tmp; scgi_temp_path {w}/tmp; keepalive_requests 100000;
  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
    location /p/ {{ alias {root}/; }} }} }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ua(mac: str) -> str:
    return "Yealink SIP-T46S 66.86.0.15 " + ":".join(mac[i:i + 2] for i in range(0, 12, 2))


def wait_port(port: int, proc: subprocess.Popen, what: str, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not start")


def exit_on_sigterm() -> None:
    """SIGTERM unwinds the main process like Ctrl-C: its `finally` blocks stop the servers it started."""
    main_pid = os.getpid()

    def handler(*_):
        if os.getpid() != main_pid:
            os._exit(143)
        sys.exit(143)
    signal.signal(signal.SIGTERM, handler)


def worker_signals() -> None:
    """Pool initializer: client workers die on SIGTERM (Pool.terminate) and leave Ctrl-C to the parent."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def digest_header(mac: str, password: str, challenge: str, uri: str, nc: int) -> str:
    nonce = re.search(r'nonce="([^"]+)"', challenge).group(1)
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1, ha2, cnonce = md5(f"{mac}:provisioner:{password}"), md5(f"GET:{uri}"), os.urandom(8).hex()
    resp = md5(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{mac}", realm="provisioner", nonce="{nonce}", uri="{uri}", '
            f'algorithm=MD5, qop=auth, nc={nc:08x}, cnonce="{cnonce}", response="{resp}"')


def client(args) -> tuple[int, int, float]:
    """Fetch every device of `jobs`; returns (ok, failed, seconds)."""
    port, ca, jobs, auth, keepalive, expect = args
    ctx = ssl.create_default_context(cafile=ca)
    ok = bad = 0
    conn = None
    t0 = time.monotonic()
    for mac, password in jobs:
        uri = f"/p/{mac}.cfg"
        try:
            if conn is None or not keepalive:
                if conn:
                    conn.close()
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
            headers = {"User-Agent": ua(mac)}
            conn.request("GET", uri, headers=headers)
            r = conn.getresponse()
            body = r.read()
            if auth and r.status == 401:
                headers["Authorization"] = digest_header(mac, password, r.getheader("WWW-Authenticate"), uri, 1)
                conn.request("GET", uri, headers=headers)
                r = conn.getresponse()
                body = r.read()
            if r.status == 200 and hashlib.sha256(body).hexdigest() == expect[mac]:
                ok += 1
            else:
                bad += 1
        except (OSError, http.client.HTTPException):
            bad += 1
            conn = None
    if conn:
        conn.close()
    return ok, bad, time.monotonic() - t0


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU time of these processes and their children so far (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                total += cpu_seconds([int(child)])
        except (OSError, IndexError, ValueError):
            pass
    return total


def storm(port, ca, creds, expect, clients, auth, keepalive, server_pid=None) -> tuple[float, int]:
    macs = list(creds)
    chunks = [[(m, creds[m]) for m in macs[i::clients]] for i in range(clients)]
    with mp.Pool(clients, initializer=worker_signals) as pool:
        cpu0 = cpu_seconds([server_pid]) if server_pid else 0
        t0 = time.monotonic()
        res = pool.map(client, [(port, ca, c, auth, keepalive, expect) for c in chunks])
        dt = time.monotonic() - t0
        if server_pid:
            print(f"  port {port}: server busy {100 * (cpu_seconds([server_pid]) - cpu0) / dt:.0f}% of one core")
    ok, bad = sum(r[0] for r in res), sum(r[1] for r in res)
    return ok / dt, bad


def run(devices: int = 2000, clients: int = 4, log=print) -> list[tuple]:
    """Both storms against both servers; rows of (label, provisioner/s, nginx/s, provisioner errors, nginx errors)."""
    if not shutil.which("nginx"):
        raise SystemExit("nginx is needed (apt-get install nginx)")
    work = Path(tempfile.mkdtemp(prefix="prov-storm-"))
    procs: list[subprocess.Popen] = []
    try:
        port, nport = free_port(), free_port()
        macs = [f"805ec0{0x200000 + i:06x}" for i in range(devices)]
        lines = ["defaults:", f"  provisioning_url: https://127.0.0.1:{port}/p/", "  registrar: {host: sip.bench.invalid}",
                 "sites:", "  bench: {networks: [127.0.0.0/8]}", "devices:"]
        lines += [f"  - {{mac: '{m}', vendor: yealink, model: T46S, site: bench, "
                  f"lines: [{{extension: '{2000 + i}', display_name: 'Phone {i}'}}]}}" for i, m in enumerate(macs)]
        (work / "inventory.yaml").write_text("\n".join(lines) + "\n")
        t = time.monotonic()
        log_file = open(work / "serve.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "provisioner", "--home", str(work / "home"), "--inventory", str(work / "inventory.yaml"),
             "serve", "--https", f"127.0.0.1:{port}", "--tftp", ""], stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
            start_new_session=True))  # Ctrl-C reaches this process only; its `finally` stops the servers
        wait_port(port, procs[0], "provisioner")
        log(f"provisioner up with {devices} devices in {time.monotonic() - t:.1f} s")
        tls = work / "home" / "tls"
        ca = str(tls / "ca.pem")

        # enrolment: every device's first fetch hands it its credentials
        ctx = ssl.create_default_context(cafile=ca)
        root = work / "files"
        root.mkdir()
        creds, expect = {}, {}
        t = time.monotonic()
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        for m in macs:
            conn.request("GET", f"/p/{m}.cfg", headers={"User-Agent": ua(m)})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, (m, r.status)
            creds[m] = re.search(rb"static\.auto_provision\.server\.password = (\S+)", body).group(1).decode()
            expect[m] = hashlib.sha256(body).hexdigest()
            (root / f"{m}.cfg").write_bytes(body)
        conn.close()
        log(f"enrolled {len(macs)} devices in {time.monotonic() - t:.1f} s (one client, sequential)")

        (work / "tmp").mkdir()
        (work / "nginx.conf").write_text(NGINX_CONF.format(w=work, port=nport, cert=tls / "server.pem",
                                                           key=tls / "server.key", root=root))
        os.chmod(work, 0o755)
        for p in root.iterdir():
            os.chmod(p, 0o644)
        os.chmod(root, 0o755)
        procs.append(subprocess.Popen(["nginx", "-p", str(work), "-c", str(work / "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_port(nport, procs[1], "nginx")

        if os.environ.get("PROFILE_SERVER"):  # py-spy the server during the storm (profiling only)
            subprocess.Popen(["py-spy", "record", "-d", "25", "-o", os.environ["PROFILE_SERVER"], "-f", "raw",
                              "-p", str(procs[0].pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        rows = []
        for label, keepalive in (("new TLS connection per device", False), ("keep-alive", True)):
            prov, bad_p = storm(port, ca, creds, expect, clients, True, keepalive, procs[0].pid)
            ngx, bad_n = storm(nport, ca, creds, expect, clients, False, keepalive, procs[1].pid)
            rows.append((label, prov, ngx, bad_p, bad_n))
        return rows
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
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4)
    a = ap.parse_args()
    exit_on_sigterm()
    rows = run(a.devices, a.clients)
    print()
    print(f"{'boot storm, ' + str(a.devices) + ' devices':34}{'provisioner':>14}{'nginx':>10}{'ratio':>8}{'errors':>8}")
    for label, prov, ngx, bad_p, bad_n in rows:
        print(f"{label:34}{prov:>10,.0f}/s{ngx:>8,.0f}/s{prov / ngx:>8.2f}{bad_p + bad_n:>8}")
    print("(provisioner: 401 challenge + digest request per device, like a phone; nginx: one plain GET, no auth)")
    return 0 if all(r[3] == 0 and r[4] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
