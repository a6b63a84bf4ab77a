"""Fingerprinting: evidence a device gives away -> (vendor, model, firmware, MAC, score, reasons).

One place for every source: a provisioning request (file name, User-Agent), an SNMP sysDescr/sysObjectID,
a SIP PnP SUBSCRIBE, a UPnP description, mDNS names, an OUI. The vendor facts come from the catalog
(vendors/*.yaml: User-Agent patterns, file names, OUIs, model names) plus a few well-known facts that
have no vendor profile (SNMP enterprise numbers). Each vote carries its reason, so `discover` and
`explain` can say why; evidence that contradicts itself (a User-Agent MAC that is not the file's MAC)
is listed in `conflicts`, because that is what an impostor or a wrong inventory entry looks like.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from provisioner.macaddr import normalize_mac
from provisioner.vendors import Catalog

log = logging.getLogger("provisioner.discovery")


@dataclass
class Evidence:
    """What a probe saw; every field optional. Never holds a secret."""

    mac: str | None = None
    user_agent: str | None = None  # HTTP or SIP User-Agent
    filename: str | None = None  # a file the device asked for
    sys_descr: str | None = None
    sys_object_id: str | None = None
    pnp_vendor: str | None = None  # SIP PnP Event parameters
    pnp_model: str | None = None
    pnp_version: str | None = None
    manufacturer: str | None = None  # UPnP description
    model_name: str | None = None
    firmware: str | None = None
    texts: list[str] = field(default_factory=list)  # mDNS names, TXT values, banners, ...
    text_source: str = "mDNS"  # who said the texts, for the reasons


@dataclass
class Identity:
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    mac: str | None = None
    kind: str | None = None  # phone | dect | ata | conference | router
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # evidence that contradicts itself


# SNMP private enterprise numbers (IANA) -> vendor name; 8072/2021 are net-snmp (any Linux box).
PENS = {
    "9": "cisco", "11": "hp", "872": "avm", "2011": "huawei", "2636": "juniper", "4526": "netgear",
    "12356": "fortinet", "14988": "mikrotik", "25506": "h3c", "30065": "arista", "41112": "ubiquiti",
}
GENERIC_PENS = {"8072": "net-snmp agent (Linux)", "2021": "UCD-SNMP agent (Linux)"}
ROUTER_VENDORS = {"cisco", "juniper", "mikrotik", "avm", "huawei", "fortinet", "ubiquiti", "netgear", "h3c",
                  "arista", "fritzbox"}

# vendors.md OUIs for phone vendors that may not have a profile in vendors/ yet ([V] entries only)
FALLBACK_OUIS = {
    "000413": "snom", "000b82": "grandstream", "c074ad": "grandstream", "0004f2": "polycom", "00907a": "polycom",
    "482567": "polycom", "64167f": "polycom", "0c383e": "fanvil", "7c2f80": "gigaset", "14b370": "gigaset",
    "0002fd": "cisco",
}
# names as they appear in banners, descriptions, PnP Event vendor= and mDNS names
VENDOR_WORDS = {
    "yealink": "yealink", "snom": "snom", "grandstream": "grandstream", "polycom": "polycom", "poly": "polycom",
    "fanvil": "fanvil", "gigaset": "gigaset", "cisco": "cisco", "linksys": "cisco", "mikrotik": "mikrotik",
    "routeros": "mikrotik", "fritz!box": "avm", "fritzbox": "avm", "avm": "avm", "openwrt": "openwrt",
}
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9!]+")


def _canonical_vendor(catalog: Catalog, name: str | None) -> str | None:
    """A vendor word as the catalog names it (a phone profile, a router profile, or a known word)."""
    if not name:
        return None
    low = name.strip().lower()
    if low in ("oem", "", "unknown"):
        return None
    for v in catalog.vendors.values():
        if low in (v.name.lower(), v.display_name.lower()):
            return v.name
    for r in catalog.routers.values():
        if low in (r.name.lower(), r.display_name.lower()):
            return r.name
    word = VENDOR_WORDS.get(low, low if re.fullmatch(r"[a-z][a-z0-9_-]{1,31}", low) else None)
    return _router_profile_for(catalog, word) or word


def _router_profile_for(catalog: Catalog, vendor: str | None) -> str | None:
    """AVM boxes are the `fritzbox` router profile when one exists."""
    if vendor is None:
        return None
    for r in catalog.routers.values():
        blob = f"{r.name} {r.display_name}".lower()
        if vendor == r.name or (vendor == "avm" and ("fritz" in blob or "avm" in blob)):
            return r.name
    return None


def _words_vendor(text: str) -> str | None:
    low = text.lower()
    for w in _WORD.findall(low):
        if w in VENDOR_WORDS:
            return VENDOR_WORDS[w]
    for key, vendor in VENDOR_WORDS.items():
        if "!" in key and key in low:
            return vendor
    for w in _WORD.findall(low):  # "snomD785/10.1.169.16": a vendor word glued to a model
        for key in PREFIX_WORDS:
            if w.startswith(key) and w[len(key):len(key) + 1].isalnum():
                return VENDOR_WORDS[key]
    return None


PREFIX_WORDS = ("snom", "yealink", "grandstream", "polycom", "fanvil", "gigaset")
_SQUASH = re.compile(r"[^a-z0-9+]")


def _key_of(keys: dict[str, str], raw: str) -> str | None:
    """The profile's model key for "VVX_400", "vvx400", "VVX-400": case and separators do not count."""
    return keys.get(_SQUASH.sub("", raw.lower()))


def _oui_vendors(catalog: Catalog, mac: str) -> list[str]:
    found = list(catalog.vendor_for_oui(mac))
    found += [r.name for r in catalog.routers.values() if mac[:6] in r.ouis]
    if not found and mac[:6] in FALLBACK_OUIS:
        found.append(FALLBACK_OUIS[mac[:6]])
    return found


def match_model(catalog: Catalog, vendor: str | None, raw: str | None) -> str | None:
    """`raw` ("snomD785", "SIP-T46S", "t46s") as the vendor profile's model key when it has one."""
    if not raw:
        return None
    raw = raw.strip()
    cands = [raw]
    if vendor:
        cands.append(re.sub(rf"^{re.escape(vendor)}[\s_-]*", "", raw, flags=re.I))
    cands += [re.sub(r"^SIP[- ]", "", c, flags=re.I) for c in list(cands)]
    prof = catalog.vendors.get(vendor or "") or catalog.routers.get(vendor or "")
    if prof is not None:
        keys = {_SQUASH.sub("", k.lower()): k for k in prof.models}
        for c in cands:
            if _key_of(keys, c):
                return _key_of(keys, c)
    return cands[-1] or raw


def _model_in_texts(catalog: Catalog, vendor: str | None, texts: list[str]) -> str | None:
    prof = catalog.vendors.get(vendor or "") or catalog.routers.get(vendor or "")
    if prof is None:
        return None
    keys = {_SQUASH.sub("", k.lower()): k for k in prof.models}
    for t in texts:
        for tok in re.findall(r"[A-Za-z0-9+]+", t):
            for c in (tok, re.sub(r"^sip", "", tok, flags=re.I), re.sub(rf"^{re.escape(vendor or '')}", "", tok, flags=re.I)):
                if _key_of(keys, c):
                    return _key_of(keys, c)
    return None


def _kind(catalog: Catalog, vendor: str | None, model: str | None) -> str | None:
    if vendor in catalog.routers:
        return "router"
    prof = catalog.vendors.get(vendor or "")
    if prof is not None:
        m = prof.models.get(model or "")
        return m.kind if m else "phone"
    if vendor in ROUTER_VENDORS:
        return "router"
    if vendor in set(FALLBACK_OUIS.values()) - {"cisco"}:
        return "phone"
    return None


@dataclass
class _Parsed:
    """What the catalog makes of the evidence, computed once for the votes and the conflicts."""

    ua: object  # UserAgentInfo | None
    descr: object  # sysDescr read as a User-Agent: UserAgentInfo | None
    per_device: list  # FileMatch of per-device file names matching ev.filename

    @classmethod
    def of(cls, catalog: Catalog, ev: Evidence) -> "_Parsed":
        per_dev = [m for m in catalog.match_file(ev.filename) if m.mac] if ev.filename else []
        return cls(catalog.parse_user_agent(ev.user_agent), catalog.parse_user_agent(ev.sys_descr), per_dev)


def _catalog_identify(catalog: Catalog, ev: Evidence, parsed: _Parsed) -> Identity:
    votes: dict[str, float] = {}
    why: dict[str, list[str]] = {}
    model = firmware = mac = None
    mac = ev.mac

    def vote(vendor: str | None, weight: float, reason: str) -> None:
        if vendor:
            votes[vendor] = votes.get(vendor, 0.0) + weight
            why.setdefault(vendor, []).append(reason)

    for ua, what, info in ((ev.user_agent, "User-Agent", parsed.ua), (ev.sys_descr, "sysDescr", parsed.descr)):
        if info:
            vote(info.vendor, 0.9 if what == "User-Agent" else 0.7, f"{what} {ua!r} matches the {info.vendor} pattern")
            model = model or match_model(catalog, info.vendor, info.model)
            firmware = firmware or info.firmware
            mac = mac or info.mac
    if ev.filename:
        per_dev = parsed.per_device
        names = sorted({m.vendor.name for m in per_dev})
        if len(names) == 1:
            vote(names[0], 0.6, f"asked for {ev.filename} ({names[0]} file name)")
        elif names:  # "<mac>.cfg" is Yealink's, Fanvil's, Polycom's…: the file alone decides nothing
            why.setdefault("", []).append(f"asked for {ev.filename} (a file name {'/'.join(names)} all use)")
        if per_dev:
            mac = mac or per_dev[0].mac
    if ev.pnp_vendor or ev.pnp_model:
        pv = _canonical_vendor(catalog, ev.pnp_vendor)
        if pv:
            vote(pv, 0.8, f"SIP PnP SUBSCRIBE says vendor={ev.pnp_vendor!r} model={ev.pnp_model!r}")
        else:  # Snom and Gigaset say vendor="OEM": their User-Agent names them
            pv = _words_vendor(ev.user_agent or "")
            vote(pv, 0.8, f"SIP PnP SUBSCRIBE (vendor={ev.pnp_vendor!r}) with User-Agent {ev.user_agent!r} naming {pv}")
        firmware = firmware or ev.pnp_version
    if ev.sys_object_id:
        m = re.match(r"^\.?1\.3\.6\.1\.4\.1\.(\d+)", ev.sys_object_id)
        if m and m.group(1) in PENS:
            v = _router_profile_for(catalog, PENS[m.group(1)]) or PENS[m.group(1)]
            vote(v, 0.6, f"sysObjectID {ev.sys_object_id} is in enterprise {m.group(1)} ({PENS[m.group(1)]})")
        elif m and m.group(1) in GENERIC_PENS:
            why.setdefault("", []).append(f"sysObjectID {ev.sys_object_id}: {GENERIC_PENS[m.group(1)]}")
    if ev.sys_descr and not parsed.descr:
        vote(_canonical_vendor(catalog, _words_vendor(ev.sys_descr)), 0.5, f"sysDescr {ev.sys_descr[:80]!r}")
    if ev.manufacturer or ev.model_name:
        text = f"{ev.manufacturer or ''} {ev.model_name or ''}"
        vote(_canonical_vendor(catalog, _words_vendor(text) or ev.manufacturer), 0.7,
             f"UPnP description: manufacturer {ev.manufacturer!r}, model {ev.model_name!r}")
        firmware = firmware or ev.firmware
    for t in ev.texts:
        v = _words_vendor(t)
        if v:
            vote(_canonical_vendor(catalog, v), 0.4, f"{ev.text_source} names {t[:80]!r}")
            break
    if mac:
        try:
            mac = normalize_mac(mac)
        except ValueError:
            mac = None
    if mac:
        for v in _oui_vendors(catalog, mac):
            vote(v, 0.4, f"OUI {mac[:2]}:{mac[2:4]}:{mac[4:6]} belongs to {v}")

    ident = Identity(mac=mac, firmware=firmware)
    neutral = list(why.get("", []))  # facts that name no vendor
    if not votes:
        ident.reasons = neutral
        return ident
    vendor = max(votes, key=lambda v: votes[v])
    ident.vendor = vendor
    ident.score = round(min(1.0, votes[vendor]), 2)
    ident.reasons = why[vendor] + neutral
    for other in votes:
        if other != vendor:
            ident.reasons.append(f"but {'; '.join(why[other])}")
    if (ev.pnp_model and ev.pnp_model.strip().upper() != "OEM"
            and (ev.pnp_vendor is None or _canonical_vendor(catalog, ev.pnp_vendor) in (vendor, None))):
        model = model or match_model(catalog, vendor, ev.pnp_model)
    if ev.model_name:
        model = model or ev.model_name
    model = model or _model_in_texts(catalog, vendor, ev.texts + ([ev.user_agent] if ev.user_agent else []))
    ident.model = match_model(catalog, vendor, model) if model else None
    ident.kind = _kind(catalog, vendor, ident.model)
    return ident


def identify(catalog: Catalog, ev: Evidence) -> Identity:
    parsed = _Parsed.of(catalog, ev)
    ident = _catalog_identify(catalog, ev, parsed)
    ident.conflicts = _conflicts(catalog, ev, parsed)
    return ident


def _conflicts(catalog: Catalog, ev: Evidence, parsed: _Parsed) -> list[str]:
    """What the evidence says twice, differently: MACs, and vendors named by different sources."""
    found: list[str] = []
    macs: dict[str, str] = {}

    def see_mac(raw: str | None, source: str) -> None:
        if not raw:
            return
        try:
            macs.setdefault(normalize_mac(raw), source)
        except ValueError:
            found.append(f"{source} carries {raw!r}, not a MAC address")

    see_mac(ev.mac, "the source MAC")
    ua, per_dev = parsed.ua, parsed.per_device
    if per_dev:
        see_mac(per_dev[0].mac, f"the file name {ev.filename}")
    if ua is not None:
        see_mac(ua.mac, "the User-Agent")
    if len(macs) > 1:
        found.append("different MACs: " + ", ".join(f"{src} says {m}" for m, src in macs.items()))
    if ua is not None and per_dev and ua.vendor not in {m.vendor.name for m in per_dev}:
        found.append(f"the User-Agent is {ua.vendor}'s, the file name is "
                     f"{'/'.join(sorted({m.vendor.name for m in per_dev}))}'s")
    if ua is not None and ev.pnp_vendor:
        pv = _canonical_vendor(catalog, ev.pnp_vendor)
        if pv and pv != ua.vendor:
            found.append(f"SIP PnP says vendor {ev.pnp_vendor!r}, the User-Agent is {ua.vendor}'s")
    return found
