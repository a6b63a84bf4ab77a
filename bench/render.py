#!/usr/bin/env python3
"""Render of N devices (goal: 10,000 in <= 1 s), in one process, the way sync does it.

An inventory of N Yealink T46S (one line each, one site) is loaded; every device gets its credentials
(not timed). Then, timed: for every device, its desired config — the file with its secrets
(`<mac>.cfg`) — is rendered and hashed, exactly as `sync_inventory` computes the desired hash
(`operations.desired_hash`: context, sandboxed Jinja2 render, per-format output check, sha256).
Templates are compiled before the clock starts (one warm-up render). Best of --rounds runs.

    .venv/bin/python bench/render.py [--devices 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss import write_inventory  # noqa: E402

GOAL_S = 1.0


def run(devices: int = 10_000, rounds: int = 3, log=print) -> dict:
    from provisioner.operations import desired_hash, generate_credentials
    from provisioner.runtime import Runtime

    work = Path(tempfile.mkdtemp(prefix="prov-render-"))
    try:
        macs = [f"805ec0{0x500000 + i:06x}" for i in range(devices)]
        write_inventory(work / "inventory.yaml", macs, 8443)
        rt = Runtime(work / "home", work / "inventory.yaml")
        t = time.perf_counter()
        devs = list(rt.inventory.resolved.values())
        load_s = time.perf_counter() - t
        creds = {d.mac: generate_credentials(rt, d) for d in devs}
        desired_hash(rt, devs[0], creds[devs[0].mac])  # compile the templates
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            hashes = {d.mac: desired_hash(rt, d, creds[d.mac]) for d in devs}
            times.append(time.perf_counter() - t)
        assert len(set(hashes.values())) == len(devs), "two devices rendered the same config"
        best = min(times)
        log(f"  inventory of {len(devs):,} devices loaded in {load_s:.2f} s; render rounds: "
            + ", ".join(f"{x:.2f} s" for x in times) + f" -> {1000 * best / len(devs):.3f} ms/device")
        return {"devices": len(devs), "seconds": best, "rounds": times, "load_s": load_s}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    r = run(a.devices, a.rounds)
    print(f"render of {r['devices']:,} devices: {r['seconds']:.2f} s (goal <= {GOAL_S:.0f} s for 10,000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
