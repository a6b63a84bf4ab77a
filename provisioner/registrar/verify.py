"""What the registrars really hold, compared with what the devices hold.

The write-ahead record (sync.py) says what provisioner wrote; this module asks the registrars themselves,
so that `check` (reachable and writable), `devices`, `explain`, `audit` and `registrar list` report what a
phone would meet when it registers:
  - `probe`: each registrar of the inventory can be reached and written (nothing is changed);
  - `holdings`: per device, whether its registrar accepts the SIP passwords of the config it holds;
  - `orphans` / `sweep`: accounts provisioner wrote (tagged, see each backend) that no device owns any
    more: a removed device or line, a `domain` that changed. An account stays while its device may still
    use it (it has not fetched the config of its current settings yet); `sweep` removes the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

from provisioner.errors import ProvisionerError
from provisioner.inventory import ResolvedDevice
from provisioner.registrar import Registrar, backend_for, line_secrets, registrar_for
from provisioner.registrar.sync import Repair, status

log = logging.getLogger("provisioner.registrar")

FIX = "provisioner registrar sync"


def _problem(e: Exception) -> str:
    return str(e) if isinstance(e, (ProvisionerError, NotImplementedError)) else type(e).__name__


def _with_registrar(devs: Iterable[ResolvedDevice]) -> list[ResolvedDevice]:
    return [d for d in devs if d.settings.registrar.kind not in (None, "none")]


def _group(rt, devs: Iterable[ResolvedDevice]) -> tuple[dict[int, tuple[Registrar, list]], dict[str, str]]:
    """Devices by backend object (one per registrar mapping), and {mac: problem} where none can be made."""
    groups: dict[int, tuple[Registrar, list]] = {}
    errors: dict[str, str] = {}
    for dev in devs:
        try:
            b = registrar_for(rt, dev)
        except Exception as e:
            errors[dev.mac] = _problem(e)
            continue
        groups.setdefault(id(b), (b, []))[1].append(dev)
    return groups, errors


# ---- check ---------------------------------------------------------------------------------------

@dataclass
class Probe:
    registrar: str
    sites: list[str]
    ok: bool
    detail: str


def probe(rt) -> list[Probe]:
    """Every registrar the inventory's sites and devices name, reached and tested for writing."""
    regs: dict = {}
    for site, settings in rt.inventory.site_settings.items():
        regs.setdefault(settings.registrar, set()).add(site)
    for dev in rt.inventory.resolved.values():
        regs.setdefault(dev.settings.registrar, set()).add(dev.site)
    by_target: dict[str, tuple[Registrar, set]] = {}
    broken: dict[tuple[str, str], set] = {}
    for reg, sites in regs.items():
        if reg.kind in (None, "none"):
            continue
        try:
            b = backend_for(rt, reg)
        except Exception as e:
            broken.setdefault((reg.kind, _problem(e)), set()).update(sites)
            continue
        by_target.setdefault(b.target(), (b, set()))[1].update(sites)
    out = [Probe(kind, sorted(sites), False, problem) for (kind, problem), sites in broken.items()]
    for b, sites in by_target.values():
        try:
            out.append(Probe(b.label, sorted(sites), True, b.probe()))
        except Exception as e:
            out.append(Probe(b.label, sorted(sites), False, _problem(e)))
    return out


# ---- what each device's registrar holds ------------------------------------------------------------

@dataclass
class Holding:
    status: str  # held | not held | unreachable | none (no registrar) | decommissioned
    registrar: str | None
    detail: str = ""

    @property
    def bad(self) -> bool:
        return self.status in ("not held", "unreachable")


def _recorded(rt, dev: ResolvedDevice, b: Registrar, generation: int) -> Holding:
    """For a registrar that cannot tell (the FRITZ!Box keeps passwords write-only): the write record."""
    rec = status(rt, dev.mac)
    if rec and rec["held_generation"] == generation and not rec["write_in_flight"] and rec["target"] == b.target():
        return Holding("held", b.label, "per the record of what was written (this registrar does not tell)")
    return Holding("not held", b.label, _why_not(rec))


def _why_not(rec: dict | None) -> str:
    if rec is None:
        return "never written there"
    if rec.get("error"):
        return f"the last write failed: {rec['error']}"
    if rec.get("write_in_flight"):
        return "a write was cut short"
    return "its account there does not take the device's current SIP password"


def holdings(rt, macs: Iterable[str] | None = None) -> dict[str, Holding]:
    """Per inventory phone: does its registrar accept the SIP passwords of its current credentials?"""
    inv = rt.inventory
    devs = [inv.resolved[m] for m in (sorted(inv.resolved) if macs is None else macs) if m in inv.resolved]
    states = {s.mac: s for s in rt.store.all_devices()} if macs is None else {
        m: s for m in (d.mac for d in devs) if (s := rt.store.device(m)) is not None}
    out: dict[str, Holding] = {}
    todo = []
    for dev in devs:
        st = states.get(dev.mac)
        if dev.settings.registrar.kind in (None, "none"):
            out[dev.mac] = Holding("none", None, "no registrar in the inventory (managed by other means)")
        elif st is None:
            out[dev.mac] = Holding("not held", None, "not in the store yet")
        elif st.state == "decommissioned":
            out[dev.mac] = Holding("decommissioned", None)
        else:
            todo.append(dev)
    groups, errors = _group(rt, todo)
    for mac, problem in errors.items():
        out[mac] = Holding("unreachable", None, problem)
    for b, group in groups.values():
        active = {d.mac: line_secrets(rt.store.credentials(d.mac, "active")) for d in group}
        try:
            held = b.holds_many([(d, active[d.mac]) for d in group])
        except Exception as e:
            for d in group:
                out[d.mac] = Holding("unreachable", b.label, _problem(e))
            continue
        for d in group:
            st = states[d.mac]
            ok = held.get(d.mac)
            if ok is None:
                out[d.mac] = _recorded(rt, d, b, st.generation)
            elif ok:
                out[d.mac] = Holding("held", b.label)
            elif st.pending_hash and b.holds(d, line_secrets(rt.store.credentials(d.mac, "pending"))):
                out[d.mac] = Holding("held", b.label, "the pending generation: a switch is being served")
            else:
                out[d.mac] = Holding("not held", b.label, _why_not(status(rt, d.mac)))
    return out


# ---- accounts no device owns -----------------------------------------------------------------------

@dataclass
class Orphan:
    registrar: str
    username: str
    domain: str
    device: str | None  # the device it was written for, if the registrar keeps that
    backend: Registrar = field(repr=False)
    sites: tuple[str, ...] = ()
    tagged: bool = True  # written by provisioner (False: `strangers` found it, another tool wrote it)

    @property
    def account(self) -> str:
        return f"{self.username}@{self.domain}" if self.domain else self.username


@dataclass
class Stores:
    """Each place accounts live (a database, a file, a box), with what the inventory expects there."""

    backends: dict[str, Registrar] = field(default_factory=dict)
    expected: dict[str, dict[tuple[str, str], str]] = field(default_factory=dict)  # key -> owner MAC
    sites: dict[str, set[str]] = field(default_factory=dict)
    holding_older: set[str] = field(default_factory=set)  # devices that may still use an older account
    errors: list[tuple[str, str]] = field(default_factory=list)  # (site or registrar, problem)


def stores(rt, site: str | None = None) -> Stores:
    inv = rt.inventory
    states = {s.mac: s for s in rt.store.all_devices()}
    out = Stores()
    groups, errors = _group(rt, _with_registrar(inv.resolved.values()))
    for mac, problem in errors.items():
        if (inv.resolved[mac].site, problem) not in out.errors:
            out.errors.append((inv.resolved[mac].site, problem))
    for b, group in groups.values():
        if site is not None and not any(d.site == site for d in group):
            continue
        key = b.store_key()
        out.backends.setdefault(key, b)
        out.sites.setdefault(key, set()).update(d.site for d in group)
        exp = out.expected.setdefault(key, {})
        for d in group:
            st = states.get(d.mac)
            if st is not None and st.state == "decommissioned":
                continue
            for k in b.account_keys(d):
                exp.setdefault(k, d.mac)
            if st is not None and st.served_hash not in (None, st.desired_hash):
                out.holding_older.add(d.mac)
    return out


def orphans(rt, where: Stores | None = None) -> tuple[list[Orphan], list[tuple[str, str]]]:
    """Accounts provisioner wrote that no device owns any more; and (registrar, problem) where the
    registrar could not be read."""
    where = where or stores(rt)
    found, errors = [], list(where.errors)
    for key, b in where.backends.items():
        try:
            tagged = b.tagged()
        except Exception as e:
            errors.append((b.label, _problem(e)))
            continue
        expected = where.expected.get(key, {})
        for a in tagged or []:
            k = (a["username"], a.get("domain") or "")
            if k in expected:
                continue
            if a.get("device") in where.holding_older:
                continue  # its device has not fetched the config of its new settings: it may still use it
            found.append(Orphan(b.label, k[0], k[1], a.get("device"), b, tuple(sorted(where.sites.get(key, ())))))
    return found, errors


def strangers(rt, where: Stores | None = None) -> tuple[list[Orphan], list[tuple[str, str]]]:
    """Accounts in the registrars' own domains that no inventory line owns and provisioner did not write
    (another tool's, or written by hand): reported, never removed."""
    where = where or stores(rt)
    found, errors = [], []
    for key, b in where.backends.items():
        try:
            tagged = b.tagged()
            listed = b.list()
        except Exception as e:
            errors.append((b.label, _problem(e)))
            continue
        mine = {(a["username"], a.get("domain") or "") for a in tagged or []}
        expected = where.expected.get(key, {})
        for a in listed:
            k = (a["username"], a.get("domain") or "")
            if k not in expected and k not in mine and (a["username"], getattr(b, "domain", "") or "") not in expected:
                found.append(Orphan(b.label, k[0], k[1], None, b, tuple(sorted(where.sites.get(key, ()))), False))
    return found, errors


def sweep(rt, actor: str = "system") -> list[Repair]:
    """Remove the orphans (registrar sync, serve start-up); one Repair per account removed or failed."""
    found, errors = orphans(rt)
    out = [Repair("", "failed", f"{where}: {problem}") for where, problem in errors]
    by_backend: dict[int, list[Orphan]] = {}
    for o in found:
        by_backend.setdefault(id(o.backend), []).append(o)
    for group in by_backend.values():
        b = group[0].backend
        try:
            b.remove_accounts([(o.username, o.domain) for o in group])
        except Exception as e:
            out += [Repair(o.device or "", "failed", f"orphaned account {o.account} at {b.label}: {_problem(e)}")
                    for o in group]
            continue
        out += [Repair(o.device or "", "removed", f"orphaned account {o.account} at {b.label}") for o in group]
        rt.store.audit(actor, "registrar.orphans-removed", None, f"accounts provisioner wrote at {b.label} that no "
                       f"device owns any more", {"accounts": [o.account for o in group][:500],
                                                 "devices": sorted({o.device for o in group if o.device})[:500]})
        log.info("%s: removed %d orphaned account(s)", b.label, len(group))
    return out


# ---- registrar list --------------------------------------------------------------------------------

def account_rows(rt, site: str | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Every account on the registrars (of `site`), with its owner and state; plus the accounts the
    inventory expects that are missing; and (registrar, problem) for what could not be read."""
    where = stores(rt, site)
    states = {s.mac: s for s in rt.store.all_devices()}
    held = holdings(rt, sorted({m for exp in where.expected.values() for m in exp.values()}))
    orphan_list, errors = orphans(rt, where)
    orphan_keys = {(o.registrar, o.username, o.domain) for o in orphan_list}
    rows = []
    for key, b in where.backends.items():
        expected = where.expected.get(key, {})
        try:
            listed = b.list()
            tagged = b.tagged()
        except Exception as e:
            errors.append((b.label, _problem(e)))
            continue
        mine = {(a["username"], a.get("domain") or ""): a.get("device") for a in tagged or []}
        seen = set()
        for a in list(listed) + [a for a in tagged or [] if (a["username"], a.get("domain") or "") not in
                                 {(x["username"], x.get("domain") or "") for x in listed}]:
            k = (a["username"], a.get("domain") or "")
            if k in seen:
                continue
            seen.add(k)
            owner = expected.get(k)
            dst = states.get(owner) if owner else None
            rec = status(rt, owner) if owner else None
            if owner:
                state = "held" if held.get(owner, Holding("not held", None)).status == "held" else "not held"
            elif (b.label, *k) in orphan_keys:
                state = "orphaned"
            elif tagged is not None and k in mine:
                state = f"kept until {mine[k]} fetches its config"
            else:
                state = "not provisioner's"
            rows.append({"registrar": b.label, "username": k[0], "domain": a.get("domain") or k[1] or None,
                         "device": owner, "written_by_provisioner": k in mine if tagged is not None else None,
                         "written_for": mine.get(k), "status": state,
                         "held_generation": rec and rec["held_generation"],
                         "device_generation": dst.generation if dst else None, "in_sync": state == "held"})
        domain_of = {k: k[1] for k in expected}
        for k, owner in sorted(expected.items()):
            if k not in seen:
                rec = status(rt, owner)
                dst = states.get(owner)
                rows.append({"registrar": b.label, "username": k[0], "domain": domain_of[k] or None, "device": owner,
                             "written_by_provisioner": False, "written_for": None, "status": "missing",
                             "held_generation": rec and rec["held_generation"],
                             "device_generation": dst.generation if dst else None, "in_sync": False})
    return rows, list(dict.fromkeys(errors))
