"""`provisioner dhcp export`: the DHCP options that bring a site's factory-fresh phones to this server.

One plan per site, rendered for dnsmasq, Kea or ISC dhcpd:

- option 66 (TFTP server name, RFC 2132 §9.4): the site's provisioning URL (https://host/p/), which Yealink,
  Snom, Grandstream, Fanvil, Polycom and Gigaset firmware read as their provisioning server;
- per-vendor classes matched on option 60 (vendor class identifier, RFC 2132 §9.13) where a vendor sends a
  known one and needs something else: Cisco SPA firmware reads option 66 as a TFTP server host, and asks it
  for /spa$PSN.cfg;
- option 160 (Polycom UCS's default custom boot-server option) only when the site has Polycom devices:
  RFC 7710 had given 160 to captive-portal URLs (RFC 8910 moved that to 114), so it is not sent to every
  client by default.

Nothing secret is ever in an export: a URL and host names only (vendors/*.yaml, `zero_touch:` blocks, give
each vendor's facts and their sources). Every export is recorded, so `provisioner zero-touch` can tell
whether a site's DHCP server was given the current URL.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from provisioner.errors import InputError

FORMATS = ("dnsmasq", "kea", "isc")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9:/._~%\-\[\]]+\Z")  # what a URL or host may hold in a config line


@dataclass(frozen=True)
class VendorClass:
    name: str  # tag / class name, e.g. pv-cisco
    vendor: str
    prefixes: tuple[str, ...]  # option 60 strings, matched as prefixes
    option66: str  # what option 66 carries for this class


@dataclass
class DhcpPlan:
    site: str
    networks: list[str]  # the site's IPv4 networks (the subnets this DHCP server serves)
    url: str  # the site's provisioning URL: option 66 for everyone outside a class
    option160: str | None  # the same URL for Polycom's custom option, when the site has Polycom devices
    classes: list[VendorClass] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the technician should know (printed, and in comments)


def _safe(value: str, what: str) -> str:
    if not _SAFE_VALUE.match(value):
        raise InputError(f"{what} {value!r} holds characters a DHCP server config cannot carry safely")
    return value


def plan(inventory, catalog, site: str) -> DhcpPlan:
    if site not in inventory.sites:
        raise InputError(f"unknown site {site!r} (known: {', '.join(inventory.sites)})")
    st = inventory.site_settings[site]
    url = _safe(st.provisioning_url, "provisioning_url")
    nets = [str(n) for n in st.networks if n.version == 4 and not n.is_loopback]
    vendors = {d.vendor for d in inventory.resolved.values() if d.site == site}
    tftp = urlsplit(st.tftp_url)
    tftp_host = _safe(tftp.hostname or "", "tftp_url host")
    p = DhcpPlan(site, nets, url, None)
    if not nets:
        p.notes.append(f"site {site} has no IPv4 network other than loopback: there is no LAN to serve")
    if any(catalog.get(v) and 160 in catalog.get(v).zero_touch.dhcp.options for v in vendors):
        p.option160 = url
    for name in sorted(catalog.vendors):
        zt = catalog.vendors[name].zero_touch.dhcp
        if zt.option66 == "tftp-host" and zt.vendor_classes:
            p.classes.append(VendorClass(f"pv-{name}", name, tuple(zt.vendor_classes), tftp_host))
            if (tftp.port or 69) != 69 and name in vendors:
                p.notes.append(f"{name}: factory firmware asks TFTP port 69 on the option 66 host, but this site's "
                               f"TFTP is on port {tftp.port} ({st.tftp_url})")
    if urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1"):
        p.notes.append(f"the provisioning URL {url} names this machine's loopback: a phone cannot reach it; set "
                       f"sites.{site}.provisioning_url to an address of the site's LAN")
    return p


# ---- renderers ------------------------------------------------------------------------------------------

def _header(p: DhcpPlan, comment: str) -> list[str]:
    lines = [f"{comment} provisioner dhcp export --site {p.site}: zero-touch options for the phones of site {p.site}",
             f"{comment} networks: {', '.join(p.networks) or '-'}; provisioning URL: {p.url}; nothing secret here"]
    lines += [f"{comment} note: {n}" for n in p.notes]
    return lines


def render_dnsmasq(p: DhcpPlan) -> str:
    """A snippet for dnsmasq's conf-dir (or conf-file=): vendor classes by option 60 substring, options forced
    (phones do not always list 66 in their parameter request list)."""
    out = _header(p, "#")
    for c in p.classes:
        for prefix in c.prefixes:
            out.append(f"dhcp-vendorclass=set:{c.name},{prefix}")
    not_classes = "".join(f",tag:!{c.name}" for c in p.classes)
    out.append(f"dhcp-option-force={not_classes.lstrip(',')}{',' if not_classes else ''}66,\"{p.url}\"")
    for c in p.classes:
        out.append(f"dhcp-option-force=tag:{c.name},66,\"{c.option66}\"")
    if p.option160:
        out.append(f"dhcp-option-force=160,\"{p.option160}\"")
    return "\n".join(out) + "\n"


def _kea_test(c: VendorClass) -> str:
    return " or ".join(f"substring(option[60].hex,0,{len(s)}) == '{s}'" for s in c.prefixes)


def render_kea(p: DhcpPlan) -> str:
    """A complete kea-dhcp4 configuration (JSON): the site's subnets with the options, client classes by option
    60. Add your pools (and interfaces) before use; `kea-dhcp4 -t FILE` checks it."""
    options = [{"name": "tftp-server-name", "code": 66, "data": p.url}]
    defs = []
    if p.option160:  # Kea 2.2 has no standard definition of 160: ours, a string
        defs.append({"name": "provisioner-boot-server", "code": 160, "type": "string", "space": "dhcp4"})
        options.append({"name": "provisioner-boot-server", "code": 160, "data": p.option160})
    cfg = {"Dhcp4": {
        "comment": "; ".join(line.strip() for line in _header(p, "")),
        "interfaces-config": {"interfaces": ["*"]},
        "lease-database": {"type": "memfile", "lfc-interval": 3600},
        **({"option-def": defs} if defs else {}),
        "client-classes": [{"name": c.name, "test": _kea_test(c),
                            "option-data": [{"name": "tftp-server-name", "code": 66, "data": c.option66,
                                             "always-send": True}]} for c in p.classes],
        "option-data": [dict(o, **{"always-send": True}) for o in options],
        "subnet4": [{"id": i + 1, "subnet": n, "pools": []} for i, n in enumerate(p.networks)],
    }}
    return json.dumps(cfg, indent=2) + "\n"


def render_isc(p: DhcpPlan) -> str:
    """ISC dhcpd (deprecated upstream: ISC ended its maintenance in 2022 and points to Kea) statements; include
    them in dhcpd.conf (the subnet declarations stay yours). Classes override the global option 66."""
    out = _header(p, "#")
    if p.option160:
        out.append("option provisioner-boot-server code 160 = text;")
    out.append(f'option tftp-server-name "{p.url}";')
    if p.option160:
        out.append(f'option provisioner-boot-server "{p.option160}";')
    for c in p.classes:
        test = " or ".join(f'substring(option vendor-class-identifier, 0, {len(s)}) = "{s}"' for s in c.prefixes)
        out += [f'class "{c.name}" {{', f"  match if {test};", f'  option tftp-server-name "{c.option66}";', "}"]
    return "\n".join(out) + "\n"


RENDER = {"dnsmasq": render_dnsmasq, "kea": render_kea, "isc": render_isc}


def render(p: DhcpPlan, fmt: str) -> str:
    if fmt not in RENDER:
        raise InputError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    return RENDER[fmt](p)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---- checks with the real servers (when installed) -----------------------------------------------------

def server_binary(fmt: str) -> str | None:
    return shutil.which({"dnsmasq": "dnsmasq", "kea": "kea-dhcp4", "isc": "dhcpd"}[fmt])


def check_with_server(fmt: str, text: str) -> str | None:
    """Let the real server parse the export: None when it accepts it (or is not installed here:
    `server_binary` tells), else its complaint."""
    with tempfile.TemporaryDirectory(prefix="pv-dhcp-") as d:
        path = Path(d) / f"export.{fmt}"
        if fmt == "dnsmasq":
            exe = shutil.which("dnsmasq")
            argv = [exe, "--test", f"--conf-file={path}"] if exe else None
        elif fmt == "kea":
            exe = shutil.which("kea-dhcp4")
            argv = [exe, "-t", str(path)] if exe else None
        else:
            exe = shutil.which("dhcpd")
            argv = [exe, "-t", "-cf", str(path)] if exe else None
            text = text + "\n"
        if argv is None:
            return None
        path.write_text(text)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return (r.stdout + r.stderr).strip()[-2000:]
    return None
