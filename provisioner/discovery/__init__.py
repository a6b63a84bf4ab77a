"""Discovery: what is on the site's LAN, found by mDNS, SNMP, SIP PnP, SSDP and the server's own logs.

    probes (concurrent, asyncio) -> Observation (one per finding) -> identify (provisioner/fingerprint.py)
        -> ARP fills missing MACs -> merge by MAC (else IP) -> Discovered rows -> table / JSON
        -> observations table (so `adopt MAC` knows the vendor and model later)

Importing this package is cheap: each probe module (zeroconf, pysnmp, httpx) loads when it runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from provisioner.discovery.config import DiscoveryConfig, SnmpCredentials
from provisioner.fingerprint import Evidence, identify

log = logging.getLogger("provisioner.discovery")

PROBES = ("mdns", "snmp", "sip-pnp", "ssdp", "passive")
FACTORY_COMMUNITIES = frozenset({"public", "private"})


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Observation:
    """One finding of one probe. `evidence` feeds identify(); `details` is kept as is (no secret)."""

    found_by: str
    ip: str | None = None
    mac: str | None = None
    evidence: Evidence = field(default_factory=Evidence)
    details: dict[str, Any] = field(default_factory=dict)
    factory_default: str | None = None
    notes: list[str] = field(default_factory=list)  # the probe's own reasons, kept before identify()'s
    at: dt.datetime = field(default_factory=utcnow)
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    kind: str | None = None
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)

    def identify(self, catalog) -> "Observation":
        self.evidence.mac = self.mac or self.evidence.mac
        ident = identify(catalog, self.evidence)
        self.mac = self.mac or ident.mac
        self.vendor, self.model, self.firmware = ident.vendor, ident.model, ident.firmware
        self.kind, self.score = ident.kind, ident.score
        self.reasons = [*self.notes, *(r for r in ident.reasons if r not in self.notes)]
        return self

    def row(self, run_id: str) -> dict:
        return {"at": self.at, "run_id": run_id, "found_by": self.found_by, "mac": self.mac, "ip": self.ip,
                "vendor": self.vendor, "model": self.model, "firmware": self.firmware, "kind": self.kind,
                "score": self.score, "reasons": self.reasons, "factory_default": self.factory_default,
                "details": self.details}


@dataclass
class Discovered:
    """One device as the technician sees it: every probe's findings about it, merged."""

    mac: str | None
    ip: str | None
    vendor: str | None
    model: str | None
    firmware: str | None
    kind: str | None
    found_by: list[str]
    why: list[str]
    adopted: bool
    site: str | None  # the adopted device's site, else the site whose networks hold its IP
    factory_default: list[str]
    score: float

    def as_json(self) -> dict:
        return {"mac": self.mac, "ip": self.ip, "vendor": self.vendor, "model": self.model,
                "firmware": self.firmware, "kind": self.kind, "found_by": self.found_by, "why": self.why,
                "adopted": self.adopted, "site": self.site, "factory_default": bool(self.factory_default),
                "factory_default_why": self.factory_default, "score": self.score}


def _ip_key(ip: str | None):
    try:
        return (0, int(ipaddress.ip_address(ip or "")))
    except ValueError:
        return (1, 0)


def merge(observations: list[Observation], inventory=None) -> list[Discovered]:
    """Group by MAC; a finding without a MAC joins the device with the same IP (else stands alone)."""
    by_mac: dict[str, list[Observation]] = {}
    by_ip: dict[str, list[Observation]] = {}
    for o in observations:
        if o.mac:
            by_mac.setdefault(o.mac, []).append(o)
    mac_of_ip: dict[str, set[str]] = {}
    for mac, obs in by_mac.items():
        for o in obs:
            if o.ip:
                mac_of_ip.setdefault(o.ip, set()).add(mac)
    for o in observations:
        if o.mac:
            continue
        macs = mac_of_ip.get(o.ip or "", set())
        if len(macs) == 1:
            by_mac[next(iter(macs))].append(o)
        else:
            by_ip.setdefault(o.ip or "?", []).append(o)
    out = []
    for key, obs in [*by_mac.items(), *by_ip.items()]:
        obs = sorted(obs, key=lambda o: -o.score)
        vendor = next((o.vendor for o in obs if o.vendor), None)
        same = [o for o in obs if o.vendor in (vendor, None)]
        model = next((o.model for o in same if o.model), None)
        firmware = next((o.firmware for o in same if o.firmware), None)
        kind = next((o.kind for o in same if o.kind), None)
        ips = [o.ip for o in obs if o.ip]
        ip = max(set(ips), key=ips.count) if ips else None
        found = [p for p in PROBES if any(o.found_by == p for o in obs)]
        why, fd = [], []
        for o in obs:
            for r in o.reasons:
                line = f"{o.found_by}: {r}"
                if line not in why:
                    why.append(line)
            if o.factory_default and o.factory_default not in fd:
                fd.append(o.factory_default)
        mac = key if key in by_mac else None
        adopted, site = False, None
        if inventory is not None:
            dev = inventory.device(mac) if mac else None
            adopted = dev is not None
            site = dev.site if dev else (inventory.site_for_ip(ip) if ip else None)
        score = round(min(1.0, sum(o.score for o in obs if o.vendor == vendor) / max(1, len(found)) +
                          0.1 * (len(found) - 1)), 2) if vendor else 0.0
        out.append(Discovered(mac, ip, vendor, model, firmware, kind, found, why, adopted, site, fd, score))
    return sorted(out, key=lambda d: (_ip_key(d.ip), d.mac or ""))


# ---- running the probes ---------------------------------------------------------------------------


@dataclass
class Options:
    probes: tuple[str, ...] = PROBES
    subnets: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)  # IPv4 addresses of this machine; [] = all
    timeout: float = 5.0  # how long the listeners (mDNS, SIP PnP, SSDP) run
    snmp: SnmpCredentials = field(default_factory=SnmpCredentials)
    snmp_timeout: float = 1.0
    snmp_retries: int = 1
    snmp_concurrency: int = 256
    passive_hours: float = 24.0
    auto_enrol_sites: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: DiscoveryConfig | None, **over) -> "Options":
        cfg = cfg or DiscoveryConfig()
        base = dict(subnets=list(cfg.subnets), interfaces=list(cfg.interfaces), timeout=cfg.timeout,
                    snmp_timeout=cfg.snmp.timeout, snmp_retries=cfg.snmp.retries,
                    snmp_concurrency=cfg.snmp.concurrency, auto_enrol_sites=tuple(cfg.sip_pnp.auto_enrol_sites))
        base.update({k: v for k, v in over.items() if v not in (None, (), [])})
        return cls(**base)


Report = Callable[[str, str, dict], None]  # (probe, event, info): started | found | done | error


@dataclass
class Context:
    """What the probes may read: the catalog, the inventory (who is adopted), the store (passive)."""

    catalog: Any
    inventory: Any = None
    store: Any = None


def local_ipv4() -> list[str]:
    """IPv4 addresses of this host (namespace), loopback excluded."""
    import ifaddr
    out = []
    for adapter in ifaddr.get_adapters():
        for a in adapter.ips:
            if isinstance(a.ip, str) and not a.ip.startswith("127."):
                out.append(a.ip)
    return out


def local_networks(interfaces: list[str], min_prefix: int = 22) -> list[str]:
    """The on-link IPv4 networks of the given addresses (all when none given), loopback excluded;
    a shorter prefix than `min_prefix` is narrowed to it (a default sweep stays small)."""
    import ifaddr
    nets = []
    for adapter in ifaddr.get_adapters():
        for a in adapter.ips:
            if isinstance(a.ip, str) and (not interfaces or a.ip in interfaces) and not a.ip.startswith("127."):
                net = ipaddress.ip_network(f"{a.ip}/{max(a.network_prefix, min_prefix)}", strict=False)
                if str(net) not in nets:
                    nets.append(str(net))
    return nets


def _on_link(ip: str, nets: list[str]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(n) for n in nets)


async def run_probes(ctx: Context, opts: Options, report: Report) -> list[Observation]:
    """Every chosen probe at once; one failing probe is reported and the others still count."""
    from provisioner.discovery import mdns, passive, sip_pnp, snmp, ssdp
    runners = {"mdns": mdns.probe, "snmp": snmp.probe, "sip-pnp": sip_pnp.probe, "ssdp": ssdp.probe,
               "passive": passive.probe}
    names = [p for p in PROBES if p in opts.probes]

    async def one(name: str) -> list[Observation]:
        t0 = time.monotonic()
        report(name, "started", {})
        # a hard bound per probe: the listeners stop at `timeout` by themselves, the sweep at its estimate
        budget = (snmp_budget(opts) if name == "snmp" else opts.timeout) + 15
        try:
            found = await asyncio.wait_for(
                runners[name](ctx, opts, lambda ev, info, _n=name: report(_n, ev, info)), budget)
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            report(name, "error", {"error": f"gave up after {budget:.0f} s", "seconds": time.monotonic() - t0})
            return []
        except Exception as e:  # a probe's failure is news, not the end of the run
            log.debug("probe %s failed", name, exc_info=True)
            report(name, "error", {"error": f"{type(e).__name__}: {e}", "seconds": time.monotonic() - t0})
            return []
        report(name, "done", {"count": len(found), "seconds": time.monotonic() - t0})
        return found

    results = await asyncio.gather(*(one(n) for n in names))
    return [o for r in results for o in r]


def snmp_budget(opts: Options) -> float:
    if "snmp" not in opts.probes or not opts.subnets:
        return 0.0
    n = sum(ipaddress.ip_network(s, strict=False).num_addresses for s in opts.subnets)
    waves = -(-n // max(1, opts.snmp_concurrency))
    per = opts.snmp_timeout * (opts.snmp_retries + 1)
    return waves * per * 3 + 5  # three requests per live host at most, each bounded the same way


# ---- MACs from the neighbour table -----------------------------------------------------------------


def arp_table(path: Path = Path("/proc/net/arp")) -> dict[str, str]:
    """IP -> MAC of complete entries in this namespace's neighbour table."""
    from provisioner.macaddr import normalize_mac
    out = {}
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[2] != "0x0":
            try:
                out[parts[0]] = normalize_mac(parts[3])
            except ValueError:
                continue
    return out


async def fill_macs(observations: list[Observation], wait: float = 0.3) -> None:
    """Give on-link findings without a MAC the one from the neighbour table; poke the IPs it lacks
    (one UDP datagram to the discard port makes the kernel resolve them)."""
    nets = local_networks([], min_prefix=0)
    need = {o.ip for o in observations if not o.mac and o.ip and _on_link(o.ip, nets)}
    if not need:
        return
    table = arp_table()
    missing = [ip for ip in need if ip not in table]
    if missing:
        for ip in missing[:1024]:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.setblocking(False)
                    s.sendto(b"", (ip, 9))
            except OSError:
                continue
        await asyncio.sleep(wait)
        table = arp_table()
    for o in observations:
        if not o.mac and o.ip in need and o.ip in table:
            o.mac = table[o.ip]
            o.details.setdefault("mac_from", "neighbour table")


async def discover(ctx: Context, opts: Options, report: Report) -> list[Observation]:
    obs = await run_probes(ctx, opts, report)
    await fill_macs(obs)
    for o in obs:
        o.identify(ctx.catalog)
    return obs


def new_run_id() -> str:
    return utcnow().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def save(store, observations: list[Observation], run_id: str) -> int:
    from provisioner.store.observations import add
    return add(store, [o.row(run_id) for o in observations])
