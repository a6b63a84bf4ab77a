"""`firmware status` and the audit's firmware findings: per device, what it runs, its target and where it
stands in the rollout; per site and model, the counts a technician reads after an upgrade window."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa

from provisioner.firmware import versions
from provisioner.firmware.library import VERIFIED
from provisioner.firmware.rollout import OPEN, Rollouts
from provisioner.store import as_utc, utcnow
from provisioner.store.observations import observations

PENDING = "pending"  # selected: offered, fetching, or waiting for the window / a paused rollout


@dataclass
class DeviceStatus:
    mac: str
    site: str
    vendor: str
    model: str
    version: str | None  # what it runs, as last reported
    target: str | None
    category: str  # upgraded | pending | failed | not selected | other
    state: str  # the decision (rollout.Decision.state) or the attempt's result
    why: str
    fetched_at: dt.datetime | None = None


@dataclass
class ModelStatus:
    site: str
    vendor: str
    model: str
    target: str | None
    rollout: str  # active | paused | halted
    percent: float
    window: str | None
    devices: int = 0
    upgraded: int = 0
    pending: int = 0
    failed: int = 0
    not_selected: int = 0
    other: int = 0
    note: str = ""
    by_device: list[DeviceStatus] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["by_device"] = [{**asdict(x), "fetched_at": x.fetched_at.isoformat(timespec="seconds")
                           if x.fetched_at else None} for x in self.by_device]
        return d


def reported_versions(rt, macs: set[str]) -> dict[str, list[tuple[dt.datetime, str]]]:
    """Firmware versions each device reported: its last config fetch's User-Agent and what discovery saw."""
    out: dict[str, list[tuple[dt.datetime, str]]] = {}
    inv, cat = rt.inventory, rt.catalog
    for st in rt.store.all_devices():
        if st.mac not in macs or not st.last_ua or st.last_seen is None:
            continue
        dev = inv.device(st.mac)
        info = cat.parse_user_agent(st.last_ua)
        if dev is None or info is None or info.vendor != dev.vendor:
            continue
        v = versions.from_user_agent(cat.get(dev.vendor).firmware, st.last_ua, info.firmware)
        if v:
            out.setdefault(st.mac, []).append((st.last_seen, v))
    with rt.store.engine.connect() as c:
        rows = c.execute(sa.select(observations.c.mac, observations.c.firmware, observations.c.at).where(
            observations.c.firmware.is_not(None), observations.c.mac.is_not(None))).all()
    for r in rows:
        if r.mac in macs:
            dev = inv.device(r.mac)
            v = versions.from_user_agent(cat.get(dev.vendor).firmware, r.firmware, r.firmware)
            if v:
                out.setdefault(r.mac, []).append((as_utc(r.at), v))
    return out


def current_version(reports: list[tuple[dt.datetime, str]], attempts) -> str | None:
    seen = list(reports)
    seen += [(as_utc(a.reported_at), a.reported_version) for a in attempts if a.reported_version and a.reported_at]
    return max(seen, key=lambda x: x[0])[1] if seen else None


def status(rt, rollouts: Rollouts | None = None, site: str | None = None, now: dt.datetime | None = None
           ) -> list[ModelStatus]:
    rollouts = rollouts or Rollouts(rt)
    now = now or utcnow()
    rollouts.evaluate(now)
    inv = rt.inventory
    devs = [d for d in inv.resolved.values() if d.settings.firmware is not None and (site is None or d.site == site)]
    reports = reported_versions(rt, {d.mac for d in devs})
    rollouts.attempts_ttl = max(rollouts.attempts_ttl, 600.0)  # one snapshot for the whole report
    rollouts.preload(d.mac for d in devs)
    rows: dict[tuple, ModelStatus] = {}
    for dev in sorted(devs, key=lambda d: (d.site, d.vendor, d.model, d.mac)):
        vendor = rt.catalog.get(dev.vendor)
        attempts = list(rollouts._mac_attempts(dev.mac).values())
        current = current_version(reports.get(dev.mac, []), attempts)
        d = rollouts.decide(dev, vendor, current, now)
        if d.state == "not-managed":
            continue
        att = rollouts.attempt(dev.mac, d.image.id) if d.image else None
        if d.state == "upgraded" or (att is not None and att.result == "upgraded"):
            cat, state, why = "upgraded", "upgraded", d.why if d.state == "upgraded" else att.reason
        elif att is not None and att.result == "failed":
            cat, state, why = "failed", "failed", att.reason or "failed"
        elif att is not None and att.result in OPEN:
            cat, state = PENDING, att.result
            why = (f"fetched {as_utc(att.fetched_at):%Y-%m-%d %H:%M} UTC, not back with {att.target} yet"
                   if att.fetched_at else f"offered {as_utc(att.offered_at):%Y-%m-%d %H:%M} UTC, not fetched yet")
            if d.state in ("paused", "halted"):
                why += f"; {d.why}"
        elif d.state in ("offer", "outside-window"):  # selected; offered at its next fetch (in the window)
            cat, state, why = PENDING, "selected" if d.state == "offer" else d.state, d.why
        elif d.state in ("paused", "halted"):
            selected = d.image is not None and rollouts.selected(dev, d.image)
            cat, state, why = (PENDING if selected else "not selected"), d.state, d.why
        elif d.state == "unknown-version" and d.image is not None:
            selected = rollouts.selected(dev, d.image)
            cat, state, why = (PENDING if selected else "not selected"), d.state, d.why
        elif d.state == "not-selected":
            cat, state, why = "not selected", d.state, d.why
        else:
            cat, state, why = "other", d.state, d.why
        key = (dev.site, dev.vendor, dev.model)
        m = rows.get(key)
        if m is None:
            held = rollouts.held(dev.site, dev.vendor, dev.model, d.target) if d.target else None
            r = dev.settings.rollout
            m = rows[key] = ModelStatus(dev.site, dev.vendor, dev.model, d.target, held[0] if held else "active",
                                        r.percent, r.window, note=held[1] if held else "")
        m.devices += 1
        attr = {"upgraded": "upgraded", PENDING: "pending", "failed": "failed", "not selected": "not_selected"}
        setattr(m, attr.get(cat, "other"), getattr(m, attr.get(cat, "other")) + 1)
        m.by_device.append(DeviceStatus(dev.mac, dev.site, dev.vendor, dev.model, current, d.target, cat, state,
                                        why, as_utc(att.fetched_at) if att is not None else None))
    return list(rows.values())


# ---- audit findings --------------------------------------------------------------------------------------

def findings(rt, now: dt.datetime | None = None) -> list:
    """Devices below their site's policy or on an image the library does not hold; library images whose file
    changed; halted rollouts. (provisioner/audit.py Finding objects.)"""
    from provisioner.audit import Finding
    now = now or utcnow()
    rollouts = Rollouts(rt)
    out = []
    for image in rollouts.images():
        problem = VERIFIED.problem(rt.home, image, full=True)
        if problem:
            out.append(Finding("firmware-library", "high", None, None,
                               f"library image {image.id} ({image.vendor} {image.version}) is not the file that was "
                               f"added; it is refused to every device", problem,
                               f"provisioner firmware remove {image.id} --force, then add the vendor's file again"))
    for m in status(rt, rollouts, now=now):
        if m.rollout == "halted":
            out.append(Finding("firmware-rollout", "high", None, m.site,
                               f"firmware rollout of {m.vendor} {m.model} to {m.target} halted", m.note,
                               f"provisioner firmware status --site {m.site}; once understood: "
                               f"provisioner firmware resume --site {m.site} --vendor {m.vendor}"))
        known = {i.version for i in rollouts.images() if i.vendor == m.vendor and m.model in i.models}
        for d in m.by_device:
            if d.version and d.target and versions.older(d.version, d.target):
                out.append(Finding("firmware", "medium", d.mac, d.site,
                                   f"firmware {d.version} is below the site policy ({d.target})",
                                   f"rollout: {d.category} ({d.why})",
                                   f"provisioner firmware status --site {d.site}"))
            if d.version and not any(versions.same(d.version, k) for k in known):
                out.append(Finding("firmware-image", "medium", d.mac, d.site,
                                   f"runs firmware {d.version}, an image that is not in the library",
                                   f"library versions for {d.vendor} {d.model}: {', '.join(sorted(known)) or 'none'}",
                                   "add the approved image (provisioner firmware add) or let the rollout replace it"))
    return out
