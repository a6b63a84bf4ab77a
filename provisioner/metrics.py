"""Process-wide counters in the Prometheus text format (exposed by the API's /metrics)."""

from __future__ import annotations

import threading
from collections import Counter

_lock = threading.Lock()
_counters: Counter = Counter()

HELP = {
    "provisioner_fetches_total": "Config requests answered, by transport and HTTP-like status.",
    "provisioner_bans_total": "Sources or networks banned after repeated failed requests.",
    "provisioner_locks_total": "Devices locked after an authenticated request from outside their site.",
}


def inc(name: str, labels: tuple[tuple[str, str], ...] = (), by: int = 1) -> None:
    with _lock:
        _counters[(name, labels)] += by


def count_fetch(transport: str, status: int) -> None:
    inc("provisioner_fetches_total", (("transport", transport), ("status", str(status))))


def value(name: str, labels: tuple[tuple[str, str], ...] = ()) -> int:
    with _lock:
        return _counters[(name, labels)]


def render() -> str:
    with _lock:
        items = sorted(_counters.items())
    out, seen = [], set()
    for (name, labels), v in items:
        if name not in seen:
            seen.add(name)
            out.append(f"# HELP {name} {HELP.get(name, name)}")
            out.append(f"# TYPE {name} counter")
        lab = ",".join(f'{k}="{val}"' for k, val in labels)
        out.append(f"{name}{{{lab}}} {v}" if lab else f"{name} {v}")
    return "\n".join(out) + "\n"
