#!/usr/bin/env python3
"""SNMP sweep of a /24 (issue 4's benchmark): 10 live net-snmp agents, 244 silent addresses.

Builds a namespace LAN (tests/netns.py; never the root namespace): a bridge, 10 agent hosts on
10.99.20.0/24 each running its own snmpd, and a scanner at 10.99.21.1/16 (on the same link, outside the
swept /24, so the /24 holds exactly 10 live and 244 silent addresses). Then, inside the scanner:

1. the sweep itself (provisioner.discovery.snmp.sweep), timeout 1 s, 1 retry, `--runs` times;
2. the whole command, `provisioner discover --snmp --subnet 10.99.20.0/24` (Python start-up included);
3. the serial estimate: `snmpget -t 1 -r 1` timed on every live agent and on a few silent addresses,
   extrapolated to the /24 (what a shell loop of snmpget would take).

Goal: the sweep in <= 3 s. Needs root (ip netns), snmpd and snmpget. Every loop is bounded; the
namespaces and agents are removed at the end, also on failure.

    .venv/bin/python bench/sweep.py [--runs 3] [--silent-samples 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from netns import Site, need_root  # noqa: E402

NET = "10.99.20"
SUBNET = f"{NET}.0/24"
SCANNER = "10.99.21.1"
LIVE = (3, 17, 42, 66, 91, 118, 140, 177, 203, 250)  # 10 agents; the other 244 addresses stay silent
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

SWEEP = """
import asyncio, json, time
from provisioner.discovery import snmp
from provisioner.discovery.config import SnmpCredentials
async def main():
    ips = snmp.targets([{subnet!r}])
    t0 = time.monotonic()
    answers, refusals = await snmp.sweep(ips, SnmpCredentials(communities=["public"]), timeout=1.0, retries=1,
                                         concurrency=256)
    print(json.dumps({{"seconds": time.monotonic() - t0, "addresses": len(ips), "live": len(answers),
                      "macs": sum(1 for a in answers if a.mac), "refusals": len(refusals)}}))
asyncio.run(main())
"""


def timed(site: Site, host, argv: list[str], timeout: float = 60) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    r = site.run(host, argv, timeout=timeout)
    return time.monotonic() - t0, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="sweeps to time (default 3)")
    ap.add_argument("--silent-samples", type=int, default=3, help="silent addresses timed with snmpget")
    args = ap.parse_args()
    why = need_root()
    missing = [b for b in ("snmpd", "snmpget") if shutil.which(b) is None]
    if why or missing:
        print(f"cannot run: {why or 'missing ' + ', '.join(missing)}", file=sys.stderr)
        return 2
    runs = max(1, min(args.runs, 20))
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp, Site(NET, tmp=Path(tmp) / "site") as site:
        scanner = site.add_host("scanner", 0, ip=SCANNER, prefixlen=16)
        agents = []
        for i, last in enumerate(LIVE):
            h = site.add_host(f"a{last}", last, mac=f"48:8f:5a:14:00:{last:02x}", prefixlen=16)
            site.snmpd(h, f"Bench agent {i + 1} (net-snmp)", f"agent-{last}", allow="10.99.0.0/16")
            agents.append(h)
        for h in agents:
            if not site.wait_udp(h, 161, timeout=10):
                print(f"snmpd on {h.ip} did not start:\n{site.log('snmpd-' + h.name)}", file=sys.stderr)
                return 1
        print(f"{SUBNET}: {len(LIVE)} live snmpd agents, {254 - len(LIVE)} silent addresses; "
              f"scanner {SCANNER}; timeout 1 s, 1 retry, concurrency 256")

        # 1. the sweep, in-process timing
        sweeps = []
        for _ in range(runs):
            _, r = timed(site, scanner, [PY, "-c", SWEEP.format(subnet=SUBNET)], timeout=60)
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            res = json.loads(r.stdout.strip().splitlines()[-1])
            sweeps.append(res)
            print(f"  sweep: {res['seconds']:.2f} s, {res['addresses']} addresses, {res['live']} answered "
                  f"({res['macs']} with a MAC)")
        secs = [s["seconds"] for s in sweeps]
        ok = all(s["live"] == len(LIVE) for s in sweeps)

        # 2. the whole command
        home = Path(tmp) / "home"
        inv = Path(tmp) / "inventory.yaml"
        inv.write_text("sites:\n  bench:\n    networks: [10.99.0.0/16]\n")
        wall, r = timed(site, scanner, [PY, "-m", "provisioner", "--home", str(home), "--inventory", str(inv),
                                        "discover", "--snmp", "--subnet", SUBNET, "--snmp-timeout", "1",
                                        "--snmp-retries", "1", "--json"], timeout=120)
        found = len(json.loads(r.stdout)) if r.returncode == 0 else -1
        print(f"  provisioner discover --snmp --subnet {SUBNET}: {wall:.2f} s wall (Python start-up, store and "
              f"output included), {found} devices" + ("" if r.returncode == 0 else f"\n{r.stderr}"))

        # 3. serial snmpget, measured and extrapolated
        live_t = []
        for h in agents:
            t, r = timed(site, scanner, ["snmpget", "-v2c", "-c", "public", "-t", "1", "-r", "1", "-On", h.ip,
                                         "1.3.6.1.2.1.1.1.0"], timeout=30)
            live_t.append(t)
        silent = [f"{NET}.{x}" for x in range(1, 255) if x not in LIVE][: max(1, min(args.silent_samples, 10))]
        silent_t = []
        for ip in silent:
            t, _ = timed(site, scanner, ["snmpget", "-v2c", "-c", "public", "-t", "1", "-r", "1", ip,
                                         "1.3.6.1.2.1.1.1.0"], timeout=30)
            silent_t.append(t)
        estimate = sum(live_t) + (254 - len(LIVE)) * statistics.mean(silent_t)
        print(f"  serial snmpget -t 1 -r 1: live {statistics.mean(live_t) * 1000:.0f} ms each (measured on "
              f"{len(live_t)}), silent {statistics.mean(silent_t):.2f} s each (measured on {len(silent_t)}) "
              f"-> {estimate:.0f} s for the /24 (estimate)")

    best, med = min(secs), statistics.median(secs)
    verdict = "OK" if med <= 3.0 and ok else "MISSED"
    print(f"result: sweep median {med:.2f} s (best {best:.2f} s) over {runs} run(s), goal <= 3 s: {verdict}; "
          f"{estimate / med:.0f}x faster than serial snmpget; all {len(LIVE)} agents found every run: {ok}")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
