"""Will this device provision by itself? Per device: the paths in place (DHCP export for its site, redirect
registration, SIP PnP responder on its LAN), what its vendor and model support, and a verdict with its reason.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from provisioner.store import as_utc, utcnow
from provisioner.zerotouch import state
from provisioner.zerotouch.redirect import NAMES, UNSUPPORTED


@dataclass
class Path:
    supported: bool  # by the device's vendor/model firmware
    in_place: bool  # set up on our side
    detail: str
    service: str | None = None


@dataclass
class DeviceVerdict:
    mac: str
    name: str | None
    vendor: str
    model: str
    site: str
    state: str | None
    dhcp: Path
    redirect: Path
    sip_pnp: Path
    will_provision: bool
    because: str
    todo: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _reachable(url: str) -> str | None:
    host = urlsplit(url).hostname or ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return f"{url} names this machine's loopback, which no phone can reach"
    except ValueError:
        if host == "localhost":
            return f"{url} names localhost, which no phone can reach"
    return None


def _overlaps(nets_a, nets_b) -> bool:
    return any(a.version == b.version and a.overlaps(b) for a in nets_a for b in nets_b)


def evaluate(rt, macs: list[str] | None = None, redirect_status: dict[str, object] | None = None,
             now: dt.datetime | None = None) -> list[DeviceVerdict]:
    """`redirect_status`: mac -> service.Outcome of a live query; without it, what the store recorded."""
    now = now or utcnow()
    inv, catalog, store = rt.inventory, rt.catalog, rt.store
    exports = state.last_exports(store)
    recorded = state.redirects(store)
    live_pnp = [r for r in state.responders(store, now) if r.alive]
    out = []
    for mac in (macs if macs is not None else list(inv.resolved)):
        dev = inv.device(mac)
        if dev is None:
            continue
        vendor = catalog.get(dev.vendor)
        zt = vendor.zero_touch
        st = store.device(mac)
        url = dev.settings.provisioning_url
        unreachable = _reachable(url)
        site_nets = [n for n in dev.settings.networks if not n.is_loopback]

        # DHCP
        exp = exports.get(dev.site)
        if exp is None:
            d = Path(True, False, f"no DHCP export for site {dev.site} on record")
        elif exp["url"] != url:
            d = Path(True, False, f"site {dev.site}'s last export ({exp['format']}, {as_utc(exp['at']):%Y-%m-%d}) "
                                  f"hands out {exp['url']}, not the current {url}")
        else:
            d = Path(True, True, f"exported for site {dev.site} ({exp['format']}, {as_utc(exp['at']):%Y-%m-%d %H:%M} "
                                 f"UTC): option 66" + (" as a TFTP host (option 60 class)" if
                                                       zt.dhcp.option66 == "tftp-host" else f" = {url}"))
            if zt.dhcp.option66 == "tftp-host" and not zt.dhcp.vendor_classes:
                d.in_place = False
                d.detail += f"; but no option 60 class is known to give {vendor.display_name} its TFTP host"
            tftp_port = urlsplit(dev.settings.tftp_url).port or 69
            if zt.dhcp.option66 == "tftp-host" and tftp_port != 69:
                d.in_place = False
                d.detail += f"; {vendor.display_name} asks TFTP port 69, the site's TFTP is on {tftp_port}"

        # redirect
        svc = zt.redirect
        if svc is None:
            r = Path(False, False, f"{vendor.display_name} has no redirection service")
        elif svc in UNSUPPORTED:
            r = Path(True, False, f"{NAMES[svc]}: no API here: {UNSUPPORTED[svc]}", svc)
        else:
            live = (redirect_status or {}).get(mac)
            row = recorded.get((mac, svc))
            if live is not None and live.service == svc and live.ok:
                r = Path(True, bool(live.registered), f"{NAMES[svc]} (asked now): {live.detail}", svc)
            elif live is not None and not live.ok:
                r = Path(True, bool(row and row["state"] == "registered" and row["url"] == url),
                         f"{NAMES[svc]} could not be asked ({live.detail}); recorded: "
                         f"{row['state'] if row else 'never registered'}", svc)
            elif row is None:
                r = Path(True, False, f"not registered at {NAMES[svc]}", svc)
            else:
                ok = row["state"] == "registered" and row["url"] == url
                r = Path(True, ok, f"{NAMES[svc]}: {row['state']} {as_utc(row['at']):%Y-%m-%d %H:%M} UTC (recorded)"
                         + ("" if ok or row["state"] != "registered" else f"; to {row['url']}, not {url}"), svc)

        # SIP PnP
        if not zt.sip_pnp:
            p = Path(False, False, f"{vendor.display_name} firmware does not ask by SIP PnP")
        else:
            on_lan = [x for x in live_pnp if _overlaps(x.networks, site_nets)]
            if on_lan:
                p = Path(True, True, f"responder on {', '.join(str(n) for n in on_lan[0].networks)} "
                                     f"({on_lan[0].host}, heard {int((now - on_lan[0].seen_at).total_seconds())} s ago)")
            elif live_pnp:
                p = Path(True, False, f"a responder runs, but not on site {dev.site}'s networks "
                                      f"({', '.join(str(n) for n in site_nets) or 'none'})")
            else:
                p = Path(True, False, "no `serve --sip-pnp` responder running")

        paths = [("DHCP option 66", d), ("the vendor's redirection service", r), ("SIP PnP", p)]
        working = [name for name, x in paths if x.supported and x.in_place]
        todo = []
        if not d.in_place:
            todo.append(f"provisioner dhcp export --site {dev.site} --format dnsmasq|kea|isc (and load it)")
        if r.supported and not r.in_place and svc and svc not in UNSUPPORTED:
            todo.append(f"provisioner redirect register {mac}")
        if p.supported and not p.in_place:
            todo.append(f"provisioner serve --sip-pnp on a machine of site {dev.site}'s LAN")
        state_name = st.state if st else None
        if unreachable:
            yes, because = False, f"no: {unreachable}; set sites.{dev.site}.provisioning_url to this server's " \
                                  f"address on the site's LAN"
        elif st is None:
            yes, because = False, "no: not in the store yet (the next `serve` start enrols it)"
        elif state_name in ("decommissioned", "locked"):
            yes, because = False, f"no: the device is {state_name}; the server refuses it"
        elif not working:
            yes = False
            because = "no: no path is in place: " + "; ".join(f"{n}: {x.detail}" for n, x in paths if x.supported)
        else:
            window = as_utc(st.enrol_expires_at)
            if state_name in ("enrolling", "reset-pending") and window and window < now:
                yes, because = False, (f"no: it would find this server by {working[0]}, but its enrolment window "
                                       f"closed {window:%Y-%m-%d %H:%M} UTC: provisioner reset {mac}")
            elif state_name in ("enrolling", "reset-pending"):
                yes, because = True, f"yes: by {' and '.join(working)}, and its enrolment window is open"
            else:
                yes, because = True, (f"yes: by {' and '.join(working)} (already {state_name}; after a factory reset "
                                      f"it would come back the same way, with `provisioner reset {mac}` first)")
        out.append(DeviceVerdict(mac, dev.name, dev.vendor, dev.model, dev.site, state_name, d, r, p, yes, because,
                                 todo))
    return out
