#!/usr/bin/env python3
"""`make bench`: every benchmark of issue 9 in one run, printed as one table of figures measured in that run.

  boot storm   bench/boot_storm.py: N phones fetch their own config over HTTPS with digest auth, each on a
               new TLS connection, then over kept-alive connections; nginx serves the same files (no auth)
  TFTP         bench/tftp.py: 2 KB bootstrap and 64 KB file, provisioner's TFTP server vs tftpd-hpa
  render       bench/render.py: desired config of 10,000 devices, rendered and hashed as sync does it
  RSS          bench/rss.py: resident memory of `provisioner serve` with 100,000 devices
  firmware     bench/firmware.py: 200 phones download a 40 MB image at once over HTTPS, nginx serves the same file

Everything runs on 127.0.0.1; every server started here is stopped on the way out (also on Ctrl-C or
SIGTERM). `--quick` is a smoke run of a couple of minutes with smaller counts (the table says which).

    .venv/bin/python bench/run_all.py [--quick] [--only storm,tftp,render,rss,firmware] [--json FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import boot_storm  # noqa: E402
import firmware as firmware_bench  # noqa: E402
import render as render_bench  # noqa: E402
import rss as rss_bench  # noqa: E402
import tftp as tftp_bench  # noqa: E402

# Goals of issue 9. A ratio goal is ours / reference (higher is better); None: no goal set, figure only.
GOALS = {
    "storm_new": 0.5,     # issue 9: boot storm >= 0.5x nginx (new TLS connections + digest)
    "storm_keepalive": None,
    "tftp_2k": 1.0,
    "tftp_64k": 0.8,
    "render_s": 1.0,     # seconds for 10,000 devices
    "rss_mb": 300.0,     # MB with 100,000 devices
    "fw_mbps": None,     # issue 18: firmware throughput next to nginx, no goal set
    "fw_cpu": None,      # server CPU per GB served, nginx / ours
}

FULL = dict(storm_devices=10_000, storm_clients=4, tftp_devices=2000, tftp_small=3000, tftp_big=1000,
            tftp_concurrency=32, tftp_hpa_small=1000, tftp_hpa_big=300, tftp_hpa_concurrency=16, tftp_rounds=3,
            render_devices=10_000, render_rounds=5, rss_devices=100_000, rss_restart=True, fw_phones=200, fw_mb=40)
QUICK = dict(storm_devices=1000, storm_clients=4, tftp_devices=500, tftp_small=1000, tftp_big=200,
             tftp_concurrency=32, tftp_hpa_small=300, tftp_hpa_big=150, tftp_hpa_concurrency=16, tftp_rounds=2,
             render_devices=10_000, render_rounds=1, rss_devices=20_000, rss_restart=False, fw_phones=50, fw_mb=10)


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "?")
    mem = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), 0)
    return (f"{os.cpu_count()} CPU ({cpu}), {mem / 2**20:.1f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Table:
    HEAD = ("measure", "ours", "reference", "ratio", "goal", "result")

    def __init__(self):
        self.rows: list[tuple[str, ...]] = []
        self.records: list[dict] = []

    def ratio(self, key, measure, ours, ref, ref_name, unit="/s", errors=0):
        r = ours / ref if ref else 0.0
        goal = GOALS[key]
        result = "ERRORS" if errors else ("-" if goal is None else ("PASS" if r >= goal else "MISS"))
        self.rows.append((measure, f"{ours:,.0f}{unit}", f"{ref_name} {ref:,.0f}{unit}", f"{r:.2f}x",
                          "-" if goal is None else f">= {goal:.1f}x", result + (f" ({errors} errors)" if errors else "")))
        self.records.append({"key": key, "measure": measure, "ours": ours, "reference": ref, "ratio": r,
                             "goal": goal, "result": result, "errors": errors})

    def value(self, key, measure, value, text, goal_text, below=True):
        goal = GOALS[key]
        ok = value <= goal if below else value >= goal
        self.rows.append((measure, text, "-", "-", goal_text, "PASS" if ok else "MISS"))
        self.records.append({"key": key, "measure": measure, "value": value, "goal": goal,
                             "result": "PASS" if ok else "MISS"})

    def failed(self, key, measure, why):
        self.rows.append((measure, "-", "-", "-", "-", f"FAILED: {why}"))
        self.records.append({"key": key, "measure": measure, "result": "FAILED", "error": why})

    def print(self, out=sys.stdout):
        widths = [max(len(r[i]) for r in [self.HEAD] + self.rows) for i in range(len(self.HEAD))]
        line = lambda r: "  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        print(line(self.HEAD), file=out)
        print("  ".join("-" * w for w in widths), file=out)
        for r in self.rows:
            print(line(r), file=out)


def _cpu_idle(seconds: float) -> float:
    """Share of all CPUs' time idle over `seconds` (/proc/stat)."""
    def sample():
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return f[3] + f[4], sum(f)  # idle + iowait, total
    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return (i1 - i0) / max(1, t1 - t0)


def settle(limit: float = 30.0) -> float:
    """Wait (bounded) until the previous benchmark's processes are gone: a machine at least 85 % idle over
    half a second. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit and _cpu_idle(0.5) < 0.85:
        pass
    return time.monotonic() - start


def section(name: str):
    waited = settle()
    print(f"\n== {name} (load average {loadavg()}" + (f"; waited {waited:.0f} s for a quiet machine"
                                                      if waited >= 1 else "") + ")", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run with smaller counts (a couple of minutes)")
    ap.add_argument("--only", default="storm,tftp,render,rss,firmware",
                    help="comma-separated subset of storm,tftp,render,rss,firmware")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    for k, v in FULL.items():
        if isinstance(v, bool):
            continue
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"default {v:,} (quick: {QUICK[k]:,})")
    a = ap.parse_args()
    cfg = dict(QUICK if a.quick else FULL)
    for k in cfg:
        v = getattr(a, k, None)
        if v is not None:
            cfg[k] = v
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    # SIGTERM unwinds like Ctrl-C: every benchmark stops the servers it started in its `finally`
    boot_storm.exit_on_sigterm()

    t_start = time.monotonic()
    info = machine()
    print(f"provisioner benchmarks{' (--quick)' if a.quick else ''}: {info}")
    table = Table()
    status = 0

    def guarded(key, measure, fn):
        nonlocal status
        try:
            fn()
        except SystemExit as e:  # a benchmark's own refusal (a missing peer, ...) carries a message
            if not isinstance(e.code, str):
                raise
            table.failed(key, measure, e.code)
            status = 1
        except Exception as e:
            traceback.print_exc()
            table.failed(key, measure, f"{type(e).__name__}: {e}")
            status = 1

    if "storm" in only:
        n = cfg["storm_devices"]
        section(f"boot storm, {n:,} devices, {cfg['storm_clients']} client processes")

        def storm():
            rows = {label: r for label, *r in boot_storm.run(n, cfg["storm_clients"])}
            p, g, bp, bn = rows["new TLS connection per device"]
            table.ratio("storm_new", f"boot storm {n:,} devices: new TLS conn. + digest", p, g, "nginx",
                        errors=bp + bn)
            p, g, bp, bn = rows["keep-alive"]
            table.ratio("storm_keepalive", f"boot storm {n:,} devices: keep-alive + digest", p, g, "nginx",
                        errors=bp + bn)
        guarded("storm_new", f"boot storm {n:,} devices", storm)

    if "tftp" in only:
        c = cfg["tftp_concurrency"]
        section(f"TFTP, {cfg['tftp_devices']:,} devices, best of {cfg['tftp_rounds']} rounds")

        def tftp():
            rows = tftp_bench.run(cfg["tftp_devices"], cfg["tftp_small"], cfg["tftp_big"], c, rounds=cfg["tftp_rounds"],
                                  hpa=(cfg["tftp_hpa_small"], cfg["tftp_hpa_big"], cfg["tftp_hpa_concurrency"]))
            for r in rows:
                key = "tftp_2k" if r["size"] == "2 KB" else "tftp_64k"
                what = "bootstrap" if key == "tftp_2k" else "file"
                client = "in-process client" if r["client"] == "raw" else "tftp-hpa processes"
                table.ratio(key, f"TFTP {r['size']} {what} x {r['transfers']:,}, {client}, {r['concurrency']} at a time",
                            r["ours"]["rate"], r["ref"]["rate"], "tftpd-hpa",
                            errors=r["ours"]["failed"] + r["ref"]["failed"])
        guarded("tftp_2k", "TFTP", tftp)

    if "render" in only:
        n = cfg["render_devices"]
        section(f"render, {n:,} devices")

        def render():
            # a fresh process: the storm's and TFTP's leftovers would otherwise be in every GC pass it times
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                r = pool.submit(render_bench.run, n, cfg["render_rounds"]).result()
            table.value("render_s", f"render {n:,} devices (own config + hash, as sync)", r["seconds"] * 10_000 / n,
                        f"{r['seconds']:.2f} s = {1000 * r['seconds'] / n:.3f} ms/device",
                        f"<= {GOALS['render_s']:.0f} s / 10,000")
        guarded("render_s", f"render {n:,} devices", render)

    if "rss" in only:
        n = cfg["rss_devices"]
        section(f"RSS of provisioner serve, {n:,} devices")

        def rss():
            r = rss_bench.run(n, cfg["rss_restart"])
            for k, what in (("first", "first start, sync"), ("restart", "restart")):
                if k in r:
                    m = r[k]
                    table.value("rss_mb", f"serve RSS, {n:,} devices, {what} (up in {m['startup_s']:.0f} s)",
                                m["rss_mb"], f"{m['rss_mb']:.0f} MB (peak {m['peak_mb']:.0f} MB)",
                                f"<= {GOALS['rss_mb']:.0f} MB / 100,000")
        guarded("rss_mb", f"serve RSS, {n:,} devices", rss)

    if "firmware" in only:
        n, mb = cfg["fw_phones"], cfg["fw_mb"]
        section(f"firmware, {n} phones download a {mb} MB image at once")

        def fw():
            r = firmware_bench.run(n, mb)
            table.ratio("fw_mbps", f"firmware {n} phones x {mb} MB over HTTPS, at once", r["ours"], r["ref"], "nginx",
                        unit=" MB/s", errors=r["failed_ours"] + r["failed_ref"])
            table.ratio("fw_cpu", "firmware: MB served per server CPU second", 1024 / max(r["cpu_per_gb_ours"], 1e-9),
                        1024 / max(r["cpu_per_gb_ref"], 1e-9), "nginx", unit=" MB/CPU-s")
        guarded("fw_mbps", f"firmware {n} phones", fw)

    took = time.monotonic() - t_start
    print(f"\nprovisioner benchmarks{' (--quick)' if a.quick else ''}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{took / 60:.1f} min, load average at the end {loadavg()}")
    print(info)
    table.print()
    print("ratios: ours / reference, same client, same run (higher is better); '-' in goal: no goal set")
    if a.json:
        a.json.write_text(json.dumps({"machine": info, "quick": a.quick, "config": cfg, "seconds": took,
                                      "rows": table.records}, indent=2) + "\n")
    if any(r["result"] in ("FAILED", "ERRORS") for r in table.records):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
