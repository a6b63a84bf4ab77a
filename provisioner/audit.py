"""The nightly audit: every device compared with what it should be, findings people can act on.

Each check is a small function over the inventory (desired) and the store (observed); each finding says
which device, how bad, what, the evidence and the fix (usually a command). Outputs: a table, a stable
JSON document (docs/audit.md), one self-contained HTML page, and Prometheus metrics.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from provisioner.desired import device_context
from provisioner.inventory import ResolvedDevice, vendor_of
from provisioner.runtime import Runtime
from provisioner.store import DeviceState, utcnow

SCHEMA = "provisioner.audit/1"
SEVERITIES = ("critical", "high", "medium", "low", "info")
COUNTED = set(SEVERITIES) - {"info"}  # info findings do not make the audit fail
STALE_DAYS = 7
ROTATION_GRACE = dt.timedelta(hours=24)
SENSITIVE_KEY = re.compile(r"pass|pwd|pin|secret|key", re.I)


@dataclass(frozen=True)
class Finding:
    type: str  # drift | rotation | never-enrolled | stale | locked | enrolment-conflict | firmware |
    #            local-override | policy | orphan | registrar | unused | factory-default | exposure | tamper
    severity: str
    device: str | None
    site: str | None
    what: str
    evidence: str
    fix: str

    def key(self):
        return (SEVERITIES.index(self.severity), self.site or "", self.device or "", self.type)


@dataclass
class Report:
    generated_at: dt.datetime
    devices: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def counted(self) -> list[Finding]:
        return [f for f in self.findings if f.severity in COUNTED]

    def summary(self) -> dict:
        by_sev = {s: 0 for s in SEVERITIES}
        by_type: dict[str, int] = {}
        by_site: dict[str, dict[str, int]] = {}
        for f in self.findings:
            by_sev[f.severity] += 1
            if f.severity not in COUNTED:  # by type and site: only what needs action
                continue
            by_type[f.type] = by_type.get(f.type, 0) + 1
            site = by_site.setdefault(f.site or "-", {})
            site[f.type] = site.get(f.type, 0) + 1
        return {"devices": self.devices, "findings": len(self.counted), "by_severity": by_sev,
                "by_type": dict(sorted(by_type.items())), "by_site": dict(sorted(by_site.items()))}

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "generated_at": self.generated_at.isoformat(timespec="seconds"),
                "compliant": not self.counted, "summary": self.summary(),
                "findings": [asdict(f) for f in sorted(self.findings, key=Finding.key)]}


def _iso(v: dt.datetime | None) -> str:
    return v.isoformat(timespec="seconds") if v else "never"


def _version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts) if parts else None


# ---- checks over one device ----------------------------------------------------------------------

def check_state(dev: ResolvedDevice, st: DeviceState, now: dt.datetime, rotation_started: dt.datetime | None,
                conflict: str | None = None) -> Iterable[Finding]:
    mac, site = dev.mac, dev.site
    if st.state == "locked" and (st.lock_reason or "").startswith("enrolment conflict"):
        # two devices claim one identity: the one that enrolled, and one asking without credentials
        yield Finding("enrolment-conflict", "critical", mac, site,
                      "two devices claim this identity: the enrolled one may have stolen the enrolment",
                      conflict or st.lock_reason,
                      f"find the real phone: if it is the enrolled one, provisioner unlock {mac}; otherwise "
                      f"provisioner reset {mac} --enrol-from <the real phone's address>")
    elif st.state == "locked":
        yield Finding("locked", "high", mac, site, "device is locked and gets no config",
                      st.lock_reason or "locked by a security event", f"check the reason, then: provisioner unlock {mac}")
    if st.state == "enrolling":
        if st.enrol_expires_at and now > st.enrol_expires_at:
            yield Finding("never-enrolled", "medium", mac, site, "adopted but never enrolled; the window expired",
                          f"window closed {_iso(st.enrol_expires_at)}, no fetch from the device",
                          f"plug the phone in on site {site}, then: provisioner reset {mac}")
        else:
            yield Finding("never-enrolled", "info", mac, site, "waiting for the device's first fetch",
                          f"enrolment window open until {_iso(st.enrol_expires_at)}", "power the phone on on site")
        return
    if st.served_hash and st.desired_hash and st.served_hash != st.desired_hash and not st.pending_hash:
        yield Finding("drift", "high", mac, site, "device holds an older config than the desired one",
                      f"served {st.served_hash[:12]} at {_iso(st.last_seen)}, desired {st.desired_hash[:12]}",
                      f"provisioner reprovision {mac} --wait 300")
    if st.pending_hash and rotation_started and now - rotation_started > ROTATION_GRACE:
        yield Finding("rotation", "medium", mac, site, "credential rotation not confirmed by the device",
                      f"rotation started {_iso(rotation_started)}, device last seen {_iso(st.last_seen)}",
                      f"check the phone is online, then: provisioner reprovision {mac} --wait 300")
    stale_days = STALE_DAYS
    if st.last_seen and now - st.last_seen > dt.timedelta(days=stale_days):
        yield Finding("stale", "medium", mac, site, f"not seen for more than {stale_days} days",
                      f"last fetch {_iso(st.last_seen)} from {st.last_ip}",
                      "check the phone is powered and reaches the server; decommission it if it is gone")


def check_firmware(rt: Runtime, dev: ResolvedDevice, st: DeviceState) -> Iterable[Finding]:
    vendor = vendor_of(rt.catalog, dev)
    minimum = vendor.models[dev.model].min_firmware or vendor.min_firmware
    info = rt.catalog.parse_user_agent(st.last_ua)
    if not minimum or info is None or not info.firmware:
        return
    have, need = _version(info.firmware), _version(minimum)
    if have and need and have < need:
        yield Finding("firmware", "medium", dev.mac, dev.site, f"firmware {info.firmware} is below {minimum}",
                      f"User-Agent of the last fetch: {st.last_ua}", f"upgrade the {vendor.display_name} firmware")


def check_policy(dev: ResolvedDevice) -> Iterable[Finding]:
    s = dev.settings
    if s.registrar.transport != "tls":
        yield Finding("policy", "medium", dev.mac, dev.site, f"SIP over {s.registrar.transport.upper()}, not TLS",
                      "credentials and call setup travel in clear", "set registrar.transport: tls for the site/device")
    if s.policy.srtp != "required":
        yield Finding("policy", "medium" if s.policy.srtp == "off" else "low", dev.mac, dev.site,
                      f"SRTP {s.policy.srtp}, not required", "media may travel unencrypted",
                      "set policy.srtp: required")
    if not s.policy.blocked_prefixes:
        yield Finding("policy", "medium", dev.mac, dev.site, "no blocked destination prefixes",
                      "international and premium-rate numbers are reachable from the phone",
                      "set policy.blocked_prefixes (e.g. 00, 0899) for the site")
    if s.policy.tftp == "full":
        yield Finding("policy", "medium", dev.mac, dev.site, "TFTP hands out full configs",
                      "TFTP has no authentication: anyone on the site networks can read this device's secrets",
                      "set policy.tftp: bootstrap")


def _keyvalue(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def check_local_overrides(rt: Runtime, dev: ResolvedDevice, st: DeviceState) -> Iterable[Finding]:
    uploads = rt.store.latest_uploads(dev.mac)
    if not uploads:
        return
    vendor = vendor_of(rt.catalog, dev)
    if vendor.format != "keyvalue":
        for name, (at, _) in uploads.items():
            yield Finding("local-override", "low", dev.mac, dev.site, f"device uploaded {name}",
                          f"uploaded {_iso(at)} (settings comparison supports key=value formats)",
                          f"review it; provisioner reprovision {dev.mac} restores the desired config")
        return
    status = "pending" if st.pending_hash else "active"
    creds = rt.store.credentials(dev.mac, status)
    _, desired = rt.renderer.device_file(device_context(dev, vendor, creds), vendor.trigger)
    want = _keyvalue(desired.decode())
    for name, (at, content) in uploads.items():
        got = _keyvalue(content.reveal())
        changed = sorted(k for k, v in got.items() if want.get(k) != v)
        if not changed:
            continue
        secret_keys = [k for k in changed if SENSITIVE_KEY.search(k)]
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        yield Finding("local-override", "high" if secret_keys else "medium", dev.mac, dev.site,
                      f"{len(changed)} setting(s) changed on the phone",
                      f"{name} uploaded {_iso(at)}: {shown}" + (" (values of secret settings not shown)"
                                                                if secret_keys else ""),
                      f"provisioner reprovision {dev.mac} (restores and rotates), then find who changed it")


# ---- checks over the fleet -----------------------------------------------------------------------

def check_store_orphans(rt: Runtime, states: list[DeviceState]) -> Iterable[Finding]:
    for st in states:
        known = st.mac in rt.inventory.resolved or st.mac in rt.inventory.routers  # routers: rows too
        if not known and st.state != "decommissioned":
            yield Finding("orphan", "high", st.mac, st.site, "device removed from inventory but not decommissioned",
                          f"state {st.state}; its credentials still work at the server",
                          f"provisioner decommission {st.mac}")


def check_registrars(rt: Runtime) -> Iterable[Finding]:
    """What the registrars really hold: a device whose current SIP password its registrar does not take
    cannot register; an account provisioner wrote that no device owns still takes the password it was
    given (a removed device or line, a changed domain); an account of nobody's in the registrar's domain."""
    from provisioner.registrar import verify
    unread: dict[tuple[str, str], list[str]] = {}
    sites: dict[tuple[str, str], set[str]] = {}
    for mac, h in verify.holdings(rt).items():
        dev = rt.inventory.resolved[mac]
        if h.status == "not held":
            yield Finding("registrar", "high", mac, dev.site, "its registrar does not accept its current SIP password",
                          f"{h.registrar or 'registrar'}: {h.detail}", "provisioner registrar sync (if it fails: "
                          "provisioner check)")
        elif h.status == "unreachable":
            unread.setdefault((h.registrar or "registrar", h.detail), []).append(mac)
            sites.setdefault((h.registrar or "registrar", h.detail), set()).add(dev.site)
    for (label, detail), macs in unread.items():
        for site in sorted(sites[(label, detail)]):
            yield Finding("registrar", "high", None, site, f"registrar could not be read: {len(macs)} device(s) may "
                          f"not be able to register", f"{label}: {detail}",
                          "provisioner check (says what is wrong), then provisioner registrar sync")
    where = verify.stores(rt)
    found, errors = verify.orphans(rt, where)
    more, errors2 = verify.strangers(rt, where)
    for o in found:
        yield Finding("orphan", "high", o.device, o.sites[0] if o.sites else None,
                      f"registrar account {o.account} written by provisioner is owned by no device",
                      f"{o.registrar} still takes the password it was given"
                      + (f" (it was {o.device}'s)" if o.device else ""), "provisioner registrar sync (removes it)")
    for o in more:
        yield Finding("orphan", "high", None, o.sites[0] if o.sites else None,
                      f"registrar account {o.account} is in no inventory line", f"{o.registrar}; not written by "
                      f"provisioner", "remove the account from the registrar, or add its line to the inventory")
    for label, detail in dict.fromkeys([e for e in errors + errors2 if e[1] not in {k[1] for k in unread}]):
        yield Finding("registrar", "high", None, None, "registrar accounts could not be listed", f"{label}: {detail}",
                      "provisioner check")


def check_audit_chain(rt: Runtime) -> Iterable[Finding]:
    for problem in rt.store.verify_audit_chain():
        yield Finding("tamper", "critical", None, None, "audit log altered", problem,
                      "restore the database from a backup and investigate who had write access")


def check_routers(rt: Runtime) -> Iterable[Finding]:
    """Read-back and exposure checks of routers, where the routers module offers them."""
    try:
        from provisioner import routers
    except ImportError:
        return
    hook: Callable | None = getattr(routers, "audit", None)
    if hook is None:
        return
    for f in hook(rt):
        yield f if isinstance(f, Finding) else Finding(**f)


def run_audit(rt: Runtime, now: dt.datetime | None = None, probe: Callable | None = None) -> Report:
    from provisioner.operations import sync_inventory
    sync_inventory(rt, actor="audit")
    now = now or utcnow()
    states = rt.store.all_devices()
    by_mac = {s.mac: s for s in states}
    rotations, conflicts = {}, {}
    for e in rt.store.audit_entries(limit=100_000):
        if e["action"] == "rotation.started" and e["target"] not in rotations:
            at = e["at"] if e["at"].tzinfo else e["at"].replace(tzinfo=dt.timezone.utc)
            rotations[e["target"]] = at
        elif e["action"] == "enrolment.conflict" and e["target"] not in conflicts:
            conflicts[e["target"]] = e["why"]
    report = Report(now, len(rt.inventory.resolved))
    with_uploads = rt.store.macs_with_uploads()
    for mac, dev in rt.inventory.resolved.items():
        st = by_mac.get(mac)
        if st is None:
            continue
        report.findings += check_state(dev, st, now, rotations.get(mac), conflicts.get(mac))
        report.findings += check_firmware(rt, dev, st)
        report.findings += check_policy(dev)
        if mac in with_uploads:  # one query for the fleet, not one per device
            report.findings += check_local_overrides(rt, dev, st)
        if probe is not None:
            report.findings += probe(rt, dev, st)
    report.findings += check_store_orphans(rt, states)
    report.findings += check_registrars(rt)
    report.findings += check_routers(rt)
    from provisioner.firmware.status import findings as firmware_findings
    report.findings += firmware_findings(rt, now)  # below the policy, image not in the library, halts (issue 18)
    report.findings += check_audit_chain(rt)
    report.findings.sort(key=Finding.key)
    return report


# ---- factory-default probe (opt-in) ----------------------------------------------------------------

def default_credentials_probe(port: int | None = None, scheme: str = "http", delay: float = 0.2,
                              timeout: float = 3.0) -> Callable:
    """Try the vendor's factory web credentials on devices seen on their site's networks.

    Rate-limited (one attempt at a time, `delay` between attempts), logged in the audit log, and only
    against addresses inside the device's own site networks.
    """
    import httpx

    def probe(rt: Runtime, dev: ResolvedDevice, st: DeviceState) -> Iterable[Finding]:
        if not st.last_ip or not dev.settings.in_site(st.last_ip):
            return
        vendor = vendor_of(rt.catalog, dev)
        host = f"[{st.last_ip}]" if ":" in st.last_ip else st.last_ip
        url = f"{scheme}://{host}" + (f":{port}" if port else "") + "/"
        with httpx.Client(verify=False, timeout=timeout) as client:
            try:
                if client.get(url).status_code not in (401, 403):
                    return  # no HTTP authentication to test (or no web server)
            except httpx.HTTPError:
                return
            for d in vendor.factory_defaults:
                if d.username is None:
                    continue
                time.sleep(delay)
                accepted = False
                for auth in (httpx.BasicAuth(d.username, d.password), httpx.DigestAuth(d.username, d.password)):
                    try:
                        accepted = client.get(url, auth=auth).status_code == 200
                    except httpx.HTTPError:
                        accepted = False
                    if accepted:
                        break
                rt.store.audit("audit", "probe.defaults", dev.mac, f"tried factory {d.account} login at {url}",
                               {"account": d.account, "accepted": accepted})
                if accepted:
                    yield Finding("factory-default", "critical", dev.mac, dev.site,
                                  f"web UI still accepts the factory {d.account} login",
                                  f"{url} accepted user {d.username!r} with the factory password",
                                  f"provisioner reprovision {dev.mac} --wait 300 (pushes a unique admin password)")
    return probe


# ---- outputs -------------------------------------------------------------------------------------

def metrics_text(report: Report) -> str:
    """node_exporter textfile / /metrics: findings per site, type and severity."""
    lines = ["# HELP provisioner_audit_findings Findings of the last audit, by site, type and severity.",
             "# TYPE provisioner_audit_findings gauge"]
    counts: dict[tuple, int] = {}
    for f in report.findings:
        k = (f.site or "-", f.type, f.severity)
        counts[k] = counts.get(k, 0) + 1
    for (site, typ, sev), n in sorted(counts.items()):
        lines.append(f'provisioner_audit_findings{{site="{site}",type="{typ}",severity="{sev}"}} {n}')
    lines += ["# HELP provisioner_audit_devices Devices in the inventory at the last audit.",
              "# TYPE provisioner_audit_devices gauge", f"provisioner_audit_devices {report.devices}",
              "# HELP provisioner_audit_last_run_timestamp_seconds When the last audit ran.",
              "# TYPE provisioner_audit_last_run_timestamp_seconds gauge",
              f"provisioner_audit_last_run_timestamp_seconds {int(report.generated_at.timestamp())}"]
    return "\n".join(lines) + "\n"


COLORS = {"critical": "#8b0000", "high": "#d9480f", "medium": "#f59f00", "low": "#1c7ed6", "info": "#868e96"}
TYPE_COLORS = ["#d9480f", "#f59f00", "#1c7ed6", "#2f9e44", "#9c36b5", "#e64980", "#0c8599", "#5c940d",
               "#862e9c", "#495057", "#c92a2a", "#364fc7", "#087f5b"]


def _chart(summary: dict) -> str:
    """Stacked horizontal bars: findings per site, one colour per type (inline SVG, no script)."""
    sites = summary["by_site"]
    types = list(summary["by_type"])
    color = {t: TYPE_COLORS[i % len(TYPE_COLORS)] for i, t in enumerate(types)}
    if not sites:
        return "<p>No findings.</p>"
    widest = max(sum(v.values()) for v in sites.values()) or 1
    bar_w, row_h, label_w = 520, 28, 140
    height = row_h * len(sites) + 40 + 22 * ((len(types) + 3) // 4)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 60}" height="{height}" '
           f'role="img" aria-label="Findings per site and type">']
    for i, (site, per_type) in enumerate(sites.items()):
        y = 10 + i * row_h
        out.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="13">{html.escape(site)}</text>')
        x = label_w
        for t in types:
            n = per_type.get(t, 0)
            if not n:
                continue
            w = max(2, round(bar_w * n / widest))
            out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{row_h - 8}" fill="{color[t]}">'
                       f'<title>{html.escape(site)}: {n} {html.escape(t)}</title></rect>')
            x += w
        out.append(f'<text x="{x + 6}" y="{y + 17}" font-size="12">{sum(per_type.values())}</text>')
    ly = 20 + row_h * len(sites)
    for j, t in enumerate(types):
        lx, lyy = label_w + (j % 4) * 135, ly + (j // 4) * 22
        out.append(f'<rect x="{lx}" y="{lyy}" width="12" height="12" fill="{color[t]}"/>'
                   f'<text x="{lx + 18}" y="{lyy + 11}" font-size="12">{html.escape(t)} ({summary["by_type"][t]})</text>')
    out.append("</svg>")
    return "".join(out)


def to_html(report: Report) -> str:
    data = report.to_json()
    s = data["summary"]
    rows = []
    for f in data["findings"]:
        rows.append("<tr class='{sev}'><td><span class='sev {sev}'>{sev}</span></td><td>{site}</td><td>{dev}</td>"
                    "<td>{typ}</td><td>{what}</td><td>{ev}</td><td><code>{fix}</code></td></tr>".format(
                        sev=f["severity"], site=html.escape(f["site"] or "-"), dev=html.escape(f["device"] or "-"),
                        typ=html.escape(f["type"]), what=html.escape(f["what"]), ev=html.escape(f["evidence"]),
                        fix=html.escape(f["fix"])))
    cards = "".join(f"<div class='card {sev}'><b>{n}</b><span>{sev}</span></div>"
                    for sev, n in s["by_severity"].items())
    status = ("<p class='ok'>Compliant: no findings.</p>" if data["compliant"]
              else f"<p class='bad'>{s['findings']} finding(s) need action.</p>")
    style = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#212529;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} .meta{color:#868e96;margin-bottom:16px}
.cards{display:flex;gap:12px;margin:12px 0}.card{border-radius:8px;padding:10px 16px;color:#fff;min-width:90px}
.card b{display:block;font-size:24px}.card span{text-transform:uppercase;font-size:11px;letter-spacing:.05em}
""" + "".join(f".card.{k}{{background:{v}}} .sev.{k}{{background:{v}}}" for k, v in COLORS.items()) + """
table{border-collapse:collapse;width:100%;margin-top:16px}th,td{border-bottom:1px solid #dee2e6;padding:6px 8px;
text-align:left;vertical-align:top}th{background:#f1f3f5}.sev{color:#fff;border-radius:4px;padding:1px 6px;
font-size:11px;text-transform:uppercase}code{font-size:12px}.ok{color:#2f9e44;font-weight:600}
.bad{color:#c92a2a;font-weight:600}
"""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>provisioner audit {html.escape(data['generated_at'])}</title>
<style>{style}</style></head><body>
<h1>Provisioning audit</h1>
<div class="meta">{html.escape(data['generated_at'])} · {s['devices']} devices · schema {SCHEMA}</div>
{status}<div class="cards">{cards}</div>
<h2>Findings per site and type</h2>{_chart(s)}
<h2>Findings</h2>
<table><thead><tr><th>severity</th><th>site</th><th>device</th><th>type</th><th>what</th><th>evidence</th>
<th>fix</th></tr></thead><tbody>{''.join(rows)}</tbody></table>
</body></html>
"""


def write_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2)
