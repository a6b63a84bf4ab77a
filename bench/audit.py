"""The nightly audit on 10,000 devices with a history of fetch events, offline checks only (no probe,
no router read-back). Goal (issue 7): <= 5 s for `run_audit`.

    .venv/bin/python bench/audit.py [--devices 10000] [--events 5]

Builds a throw-away home: an inventory of N Yealinks on three sites, the store synced (credentials
generated), then `events` fetch records per device (most served their desired config, some never
fetched, some a stale one, a few from outside their site), then times `run_audit` three times (median).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provisioner.audit import run_audit  # noqa: E402
from provisioner.operations import sync_inventory  # noqa: E402
from provisioner.runtime import Runtime  # noqa: E402
from provisioner.store import utcnow  # noqa: E402
from provisioner.store.schema import devices as devices_table  # noqa: E402

GOAL_S = 5.0


def write_inventory(path: Path, n: int) -> list[str]:
    macs = [f"805ec0{0x200000 + i:06x}" for i in range(n)]
    lines = ["defaults:", "  provisioning_url: https://127.0.0.1:8443/p/",
             "  registrar: {host: sip.bench.invalid, transport: tls}",
             "  policy: {srtp: required, blocked_prefixes: ['00', '0899']}",
             "sites:"]
    for s in range(3):
        lines.append(f"  site{s}: {{networks: [10.{s}.0.0/16]}}")
    lines.append("devices:")
    for i, mac in enumerate(macs):
        lines.append(f"  - {{mac: '{mac}', vendor: yealink, model: T46S, site: site{i % 3}, "
                     f"lines: [{{extension: '{10000 + i}', display_name: 'Phone {i}'}}]}}")
    path.write_text("\n".join(lines) + "\n")
    return macs


def fill(rt: Runtime, macs: list[str], events: int) -> None:
    now = utcnow()
    store = rt.store
    rows, updates = [], []
    for i, mac in enumerate(macs):
        kind = i % 20  # 0: never fetched; 1: stale; 2: a stale config; else: in sync
        ip = f"10.{i % 3}.{(i // 250) % 250}.{i % 250 + 1}"
        ua = "Yealink SIP-T46S 66.86.0.15 " + ":".join(mac[j:j + 2] for j in range(0, 12, 2))
        if kind == 0:
            continue
        seen = now - dt.timedelta(days=10 if kind == 1 else 0, minutes=i % 600)
        for e in range(events):
            rows.append({"at": seen - dt.timedelta(hours=e), "mac": mac, "source_ip": ip, "transport": "https",
                         "filename": f"{mac}.cfg", "status": 200, "hash": "0" * 64, "user_agent": ua,
                         "reason": "served by digest"})
        updates.append((mac, seen, ip, ua, kind == 2))
    store.record_fetches(rows)
    with store.write() as c:
        for mac, seen, ip, ua, stale_cfg in updates:
            c.execute(devices_table.update().where(devices_table.c.mac == mac).values(
                state="provisioned", last_seen=seen, last_ip=ip, last_ua=ua,
                served_hash=("f" * 64) if stale_cfg else devices_table.c.desired_hash))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=5, help="fetch events per device")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="prov-audit-") as tmp:
        tmp = Path(tmp)
        macs = write_inventory(tmp / "inventory.yaml", args.devices)
        rt = Runtime(home=tmp / "home", inventory_path=tmp / "inventory.yaml")
        t0 = time.perf_counter()
        sync_inventory(rt, actor="bench")
        t_sync = time.perf_counter() - t0
        fill(rt, macs, args.events)
        times = []
        report = None
        for _ in range(3):
            t0 = time.perf_counter()
            report = run_audit(rt)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        s = report.summary()
        print(f"audit of {args.devices:,} devices, {args.devices * args.events * 19 // 20:,} fetch events "
              f"(store synced in {t_sync:.1f} s)")
        print(f"  findings: {s['findings']} counted, by type {s['by_type']}")
        print(f"  run_audit: median {med:.2f} s of {', '.join(f'{t:.2f}' for t in times)}; goal <= {GOAL_S:.0f} s: "
              f"{'PASS' if med <= GOAL_S else 'MISS'}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
